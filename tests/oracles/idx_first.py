"""Independent IDX reader (gzip + struct only): prints the first and last image and label of
the train and t10k splits of an MNIST-family directory as JSON. An optional second argument,
comma-separated indices, adds those train images and labels under "train_at"."""
import gzip
import json
import struct
import sys


def read_images(path):
    with gzip.open(path, "rb") as f:
        magic, n, h, w = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803, hex(magic)
        data = f.read()
    size = h * w
    assert len(data) == n * size
    return n, h, w, list(data[:size]), list(data[(n - 1) * size:]), data


def read_labels(path):
    with gzip.open(path, "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        assert magic == 0x801, hex(magic)
        data = f.read()
    assert len(data) == n
    return data[0], data[-1], data


root = sys.argv[1]
out = {}
for split in ("train", "t10k"):
    n, h, w, first, last, images = read_images(f"{root}/{split}-images-idx3-ubyte.gz")
    l_first, l_last, labels = read_labels(f"{root}/{split}-labels-idx1-ubyte.gz")
    out[split] = {"n": n, "h": h, "w": w, "first": first, "last": last, "label_first": l_first, "label_last": l_last}
    if split == "train" and len(sys.argv) > 2:
        size = h * w
        out["train_at"] = {
            i: {"image": list(images[int(i) * size:(int(i) + 1) * size]), "label": labels[int(i)]}
            for i in sys.argv[2].split(",")
        }
print(json.dumps(out))
