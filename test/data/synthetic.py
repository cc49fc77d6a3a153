"""Small stand-ins for the real inputs, written in the exact on-disk formats users bring (used by
tools/make_example.py, the tests and the benchmarks).

- a CVNet checkpoint: `{'model_state': ...}` with `encoder_q.` keys (or another prefix) plus the
  re-ranking network's extra keys, from a randomly initialised ResNet with perturbed BN statistics;
- a revisitop dataset: `<root>/<name>/jpg/*.jpg` and `gnd_<name>.pkl`, with image sizes drawn from
  the real ROxford5k size list (scaled down so CPU tests stay fast).
"""

import pickle
from pathlib import Path

import cv2
import numpy as np
import torch

from model.cvnet_rerank import COMPRESSED_DIM, FEATURE_DIM, SCALES, CVLearner
from model.resnet import ResNet
from test.data.gldv2 import image_path

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "revisitop"


def random_resnet(depth=50, seed=0, reduction_dim=2048):
    """A random ResNet whose features still tell images apart.

    PyTorch's default init shrinks activations layer after layer until the BN biases dominate and
    every image gets the same descriptor. Here convolutions get He init and each BN layer is
    calibrated on a batch of noise (train-mode statistics), as after real training.
    """
    torch.manual_seed(seed)
    model = ResNet(depth, reduction_dim)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
                module.weight.fill_(0.5 if name.endswith("c_bn") else 1.0)
                module.bias.uniform_(-0.05, 0.05)
        model.head.pool.p.fill_(3.0)
        model.train()
        model(torch.randn(4, 3, 96, 128))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 0.1
    return model.eval()


def rerank_head_state(seed=0):
    """Stand-in weights of CVNet-Rerank's head with the real names and shapes (`conv2ds.*`,
    `cv_learner.*`, PyTorch's default init); the global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.ModuleDict({"conv2ds": torch.nn.ModuleList(
            torch.nn.Conv2d(FEATURE_DIM, COMPRESSED_DIM, 3, padding=1, bias=False) for _ in SCALES),
            "cv_learner": CVLearner()})
    return {k: v.clone() for k, v in head.state_dict().items()}


def cvnet_state(model, prefix="encoder_q.", rerank_seed=0):
    """The model's tensors as CVNet stores them, with the re-ranking network's keys beside them
    (unprefixed, as in CVNet's checkpoints)."""
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    state.update(rerank_head_state(rerank_seed))
    return state


def write_checkpoint(path, model=None, depth=50, prefix="encoder_q.", wrapped=True, seed=0):
    """Save a CVNet-layout checkpoint; returns the model whose weights it holds."""
    model = model if model is not None else random_resnet(depth, seed)
    state = cvnet_state(model, prefix)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state": state, "epoch": 10} if wrapped else state, path)
    return model


def real_sizes(dataset="roxford5k", split="db"):
    """(width, height) of the real images, in list order, or None when shared/ is absent."""
    path = REAL_DATA / f"{dataset}_sizes_{split}.txt"
    if not path.is_file():
        return None
    return [tuple(int(v) for v in line.split(",")[2:4]) for line in path.read_text().split()]


def stand_in_sizes(count, divisor=16, seed=0):
    """`count` image sizes drawn from the real ROxford5k distribution, divided by `divisor`."""
    sizes = real_sizes() or [(1024, 768), (768, 1024), (1024, 683)]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(sizes), size=count)
    return [(max(8, sizes[i][0] // divisor), max(8, sizes[i][1] // divisor)) for i in picks]


def textured_image(width, height, rng, label):
    """A smooth random image tinted by `label`, so images of one landmark look alike."""
    base = rng.random((max(2, height // 8), max(2, width // 8), 3))
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    tint = np.array([(label * 37) % 255, (label * 91) % 255, (label * 53) % 255]) / 255.0
    return np.clip(255 * (0.6 * image + 0.4 * tint), 0, 255).astype(np.uint8)


def write_revisitop(root, name="roxford5k", n_db=12, n_query=3, divisor=16, seed=0):
    """A tiny dataset in the revisitop layout. Database image i shows landmark i % n_query; for each
    query its landmark's images are split into easy / hard / junk. Returns the gnd dict written."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    imlist = [f"{name}_db_{i:04d}" for i in range(n_db)]
    qimlist = [f"{name}_q_{j:02d}" for j in range(n_query)]
    for i, (w, h) in zip(range(n_db), stand_in_sizes(n_db, divisor, seed)):
        cv2.imwrite(str(folder / "jpg" / f"{imlist[i]}.jpg"), textured_image(w, h, rng, i % n_query))
    gnd = []
    for j, (w, h) in zip(range(n_query), stand_in_sizes(n_query, divisor, seed + 1)):
        cv2.imwrite(str(folder / "jpg" / f"{qimlist[j]}.jpg"), textured_image(w, h, rng, j))
        same = [i for i in range(n_db) if i % n_query == j]
        gnd.append({"bbx": [w * 0.1, h * 0.15, w * 0.9 + 0.5, h * 0.85],
                    "easy": same[0::3], "hard": same[1::3], "junk": same[2::3]})
    ground_truth = {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}
    with open(folder / f"gnd_{name}.pkl", "wb") as handle:
        pickle.dump(ground_truth, handle)
    return ground_truth


def write_custom_folder(root, n_db=4, seed=0):
    """A `custom:` dataset: <root>/db/*.jpg, <root>/queries/q0.jpg and a gt.csv naming db/0 relevant."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "db").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(exist_ok=True)
    for i in range(n_db):
        cv2.imwrite(str(root / "db" / f"{i}.jpg"), textured_image(40, 32, rng, i))
    cv2.imwrite(str(root / "queries" / "q0.jpg"), textured_image(40, 32, rng, 0))
    (root / "gt.csv").write_text("query,bbox,relevant,junk\nqueries/q0.jpg,,db/0.jpg,\n")
    return root


GLDV2_INDEX = [f"{c}{c}1{i}00ff" for i, c in enumerate("0a5f3c")]   # i0..i5
GLDV2_TEST = ["b01ee1", "c02ee2", "d03ee3", "e04ee4"]              # t0..t3
R1M_SIZES = [(40, 30), (30, 40), (40, 30), (36, 28)]


def write_gldv2(root, with_lists=True):
    """A GLDv2 retrieval layout: index/ and test/ images, optional id lists, and a solution csv."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for split, ids in (("index", GLDV2_INDEX), ("test", GLDV2_TEST)):
        for image_id in ids:
            path = image_path(root, split, image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (12, 20, 3), dtype=np.uint8))
        if with_lists:
            (root / f"{split}.csv").write_text("id,url\n" + "".join(f"{i},http://x/{i}\n" for i in ids[::-1]))
    (root / "retrieval_solution_v2.1.csv").write_text(
        "id,images,Usage\n"
        f"{GLDV2_TEST[0]},{GLDV2_INDEX[1]} {GLDV2_INDEX[3]},Public\n"
        f"{GLDV2_TEST[1]},{GLDV2_INDEX[0]},Private\n"
        f"{GLDV2_TEST[2]},None,Ignored\n"
        f"{GLDV2_TEST[3]},{GLDV2_INDEX[2]} {GLDV2_INDEX[4]} {GLDV2_INDEX[5]},Public\n")


def write_r1m(root, count, seed=0):
    """A revisitop1m layout: ROOT/revisitop1m.txt and ROOT/jpg/<d>/<name>.jpg. Every 5th entry is
    written relative to ROOT (`jpg/...`, the official layout), the others relative to ROOT/jpg."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(count):
        relative = f"{i // 6}/{seed}{i:05d}.jpg"
        path = Path(root) / "jpg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = R1M_SIZES[i % len(R1M_SIZES)]
        cv2.imwrite(str(path), textured_image(w, h, rng, i))
        entries.append(f"jpg/{relative}" if i % 5 == 2 else relative)
    (Path(root) / "revisitop1m.txt").write_text("\n".join(entries) + "\n")
    return entries
