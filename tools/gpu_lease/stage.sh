#!/usr/bin/env bash
# Run HERE, in the repo root, before a device `run`: puts what the GPU machine needs into .lease/
# (ignored by git through .git/info/exclude; the data never enters the repository) and checks that
# the working tree that travels stays under the device tool's 64 MiB.
#   bash tools/gpu_lease/stage.sh [SHARED=../shared]
set -euo pipefail
shared=${1:-../shared}
grep -qx '/.lease/' .git/info/exclude 2>/dev/null || echo '/.lease/' >> .git/info/exclude
rm -rf .lease && mkdir -p .lease/train .lease/val
cp -r "$shared/data/faces-hq-train/ffhq256-deepfake140k" .lease/train/
# the 20 FFHQ faces at 512 (the training size at most), near-lossless JPEG: the PNGs would not fit
python3 - "$shared/data/faces-hq/ffhq" .lease/train/ffhq512 <<'PY'
import sys, pathlib
from PIL import Image
src, dst = map(pathlib.Path, sys.argv[1:]); dst.mkdir(parents=True)
for p in sorted(src.iterdir()):
    if p.suffix.lower() in {".png", ".jpg", ".jpeg"}:
        im = Image.open(p).convert("RGB")
        im.resize((512, 512), Image.Resampling.LANCZOS).save(dst / (p.stem + ".jpg"), quality=97, subsampling=0)
PY
# the validation faces: the first 8 held-out CelebA-HQ faces in the order `facerestore train --val` reads them
python3 - "$shared/data/faces-hq/celeba-hq" .lease/val <<'PY'
import sys, shutil, pathlib
from facerestore.image_io import list_images
src, dst = map(pathlib.Path, sys.argv[1:])
for p in list_images([src])[0][:8]:
    shutil.copy(p, dst / p.name)
PY
cp "$shared/weights/w600k_mbf.onnx" .lease/
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
lease=$(du -sb .lease | cut -f1)
echo "travels: $(( (tracked + lease) / 1048576 )) MiB of 64 (repo $(( tracked / 1048576 )), .lease $(( lease / 1048576 )))"
[ $(( tracked + lease )) -lt $(( 63 * 1048576 )) ] || { echo "too large for the device tool: drop something from .lease" >&2; exit 1; }
