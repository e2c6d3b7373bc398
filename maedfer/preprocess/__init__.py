"""Faces and clips: from a raw dataset to prepared clips and a manifest (docs/design.md).

Small steps on arrays and paths, one driver:

- `detect`: MTCNN (facenet-pytorch's networks) with batched crops and bounded face sizes;
- `align`: the 5-point template, similarity fit, temporal smoothing, warping;
- `faces`: `FaceAligner.align_frames(frames) -> AlignedClip`, `NoFaceError`;
- `video`: `read_video_frames(path) -> (frames, fps)`, probing, frame folders, `VideoError`;
- `encode`: `write_clip(frames, path, fps=..., codec="h264"|"vp9")`, atomic;
- `clip`: one raw clip -> one manifest row or one reject;
- `driver`: ``maedfer prepare`` (resumable, workers, shards, merge);
- `profile`: ``maedfer profile faces``.

Submodules are imported where used, so ``import maedfer.preprocess`` stays light.
"""

# The judging thresholds of `prepare` (declared here, light, so the CLI shows the same defaults):
# a clip shorter than MIN_FRAMES cannot hold a 16-frame window's worth of motion (a JPEG
# renamed .mp4 is one frame); frame folders of the official faces are exempt (the reference
# pads them). A face-detected clip with a face in fewer than MIN_FACE_RATIO of its frames is
# rejected: the rest would be background crops. The lab datasets have a face in every frame.
MIN_FRAMES = 8
MIN_FACE_RATIO = 0.5
