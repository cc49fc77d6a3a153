"""Build a small retrieval benchmark in the exact revisitop layout from scikit-image's bundled photos.

    python demo/make_benchmark.py --root demo/data --name demo --seed 0

writes ``<root>/<name>/jpg/*.jpg``, ``<root>/<name>/gnd_<name>.pkl`` (imlist, qimlist, gnd with
bbx / easy / hard / junk, as revisitop's) and ``<root>/<name>/meta_<name>.json`` (how every view was
made and how much of every query region it keeps). Everything follows from the seed.

Photos (CC0 / public domain, shipped inside scikit-image): each LANDMARKS photo is a "landmark" with
QUERIES_PER_LANDMARK queries; a query is the photo with a box (`bbx`) around a region of it. Each photo
(landmarks and DISTRACTORS) gets database "views": a random crop (zoom in up to about 4x), rotation,
perspective warp and scale change (one homography) to a fixed VIEW_SIZE, sometimes an occluder (grey,
or a patch of a distractor photo) and blur, a colour cast (per-channel gains and a hue rotation), a
contrast, brightness and saturation change (sometimes to grey) and JPEG re-encoding at quality 20-95.

Hard negatives ("look-alikes"): for every landmark, LOOKALIKES_PER_LANDMARK views of distractor photos
whose colours were matched to the landmark photo's (per-channel histogram matching), so that colour
statistics alone cannot tell them apart; they are negatives for every query.

Grading (per query and view of its own photo), from `kept` = the fraction of the query box's pixels
that appear in the view (inside the warped crop and not under the occluder):

    junk  kept < 0.25                                   (too little of the region to count either way)
    hard  kept >= 0.25 and (kept < 0.6 or a strong change: |rotation| > 25 deg, perspective > 0.12,
          zoom < 0.5 or zoom > 2 (zoom = view pixels per photo pixel), |hue rotation| > 12 deg,
          or grey)
    easy  otherwise

Views of other photos are negatives; the distractor photos are never queried.
"""

import argparse
import json
import pickle
from pathlib import Path

import cv2
import numpy as np

LANDMARKS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle", "hubble_deep_field"]
DISTRACTORS = ["immunohistochemistry", "retina", "colorwheel", "camera", "coins", "moon", "clock", "brick",
               "grass", "gravel", "cell", "page"]
QUERIES_PER_LANDMARK = 3
LOOKALIKES_PER_LANDMARK = 6
BASE_SIDE = 256  # photos are first resized so that their longer side has this many pixels
VIEW_SIZE = (192, 144)  # database views: width x height (or height x width)
JUNK_BELOW, EASY_FROM = 0.25, 0.6
STRONG_HUE = 12.0  # degrees of hue rotation above which a view counts as a strong change


def load_photo(name):
    """A skimage.data photo as uint8 BGR, longer side BASE_SIDE."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    if image.dtype != np.uint8:
        image = (image * 255).astype(np.uint8) if image.dtype == bool else image.astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = np.ascontiguousarray(image[:, :, 2::-1])  # RGB(A) -> BGR
    h, w = image.shape[:2]
    scale = BASE_SIDE / max(h, w)
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def query_box(rng, width, height):
    """A region of 30-60 % of each side, anywhere in the photo: [x1, y1, x2, y2]."""
    bw, bh = rng.uniform(0.3, 0.6) * width, rng.uniform(0.3, 0.6) * height
    x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    return [float(round(x1)), float(round(y1)), float(round(x1 + bw)), float(round(y1 + bh))]


def random_view(rng, photo, patches=()):
    """One database view of `photo`: (image, homography photo->view, occluder box or None, params).

    `patches`: photos an occluder may be cut from (else it is grey). Views are VIEW_SIZE (landscape)
    or its transpose, so they batch together and extract fast."""
    h, w = photo.shape[:2]
    ow, oh = VIEW_SIZE if rng.random() < 0.6 else VIEW_SIZE[::-1]
    side = rng.uniform(0.2, 1.0)
    ch = side * h
    cw = ch * ow / oh
    if cw > w:
        cw, ch = w, w * oh / ow
    cx, cy = rng.uniform(cw / 2, w - cw / 2), rng.uniform(ch / 2, h - ch / 2)
    angle = float(rng.choice([0.0, rng.uniform(-90, 90)], p=[0.4, 0.6]))
    persp = float(rng.choice([0.0, rng.uniform(0.02, 0.35)], p=[0.5, 0.5]))
    corners = np.array([[-cw / 2, -ch / 2], [cw / 2, -ch / 2], [cw / 2, ch / 2], [-cw / 2, ch / 2]])
    corners += rng.uniform(-persp, persp, size=(4, 2)) * [cw, ch]
    t = np.deg2rad(angle)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    source = (corners @ rotation.T + [cx, cy]).astype(np.float32)
    target = np.array([[0, 0], [ow, 0], [ow, oh], [0, oh]], np.float32)
    homography = cv2.getPerspectiveTransform(source, target)
    view = cv2.warpPerspective(photo, homography, (ow, oh), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    occluder, occluder_from = None, None
    if rng.random() < 0.5:
        a = rng.uniform(0.1, 0.5)
        ow_, oh_ = round(ow * np.sqrt(a)), round(oh * np.sqrt(a))
        ox, oy = int(rng.integers(0, ow - ow_ + 1)), int(rng.integers(0, oh - oh_ + 1))
        occluder = [ox, oy, ox + ow_, oy + oh_]
        if patches and rng.random() < 0.5:  # clutter: a piece of another photo in front of the scene
            occluder_from = int(rng.integers(len(patches)))
            view[oy:oy + oh_, ox:ox + ow_] = cv2.resize(patches[occluder_from], (ow_, oh_),
                                                        interpolation=cv2.INTER_AREA)
        else:
            view[oy:oy + oh_, ox:ox + ow_] = rng.integers(90, 170)
    blur = float(rng.choice([0.0, rng.uniform(0.5, 2.5)], p=[0.6, 0.4]))
    if blur:
        view = cv2.GaussianBlur(view, (0, 0), blur)
    hue = float(rng.choice([0.0, rng.uniform(-40, 40)], p=[0.5, 0.5]))
    if hue:
        hsv = cv2.cvtColor(view, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + round(hue / 2)) % 180  # OpenCV hue: 2 degrees a step
        view = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    gains = rng.uniform(0.75, 1.25, size=3) if rng.random() < 0.6 else np.ones(3)
    contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-40, 40)
    view = np.clip(view.astype(np.float32) * (contrast * gains) + brightness, 0, 255)
    saturation = rng.uniform(0.3, 1.5) if rng.random() < 0.85 else 0.0
    grey = view.mean(-1, keepdims=True)
    view = np.clip(grey + saturation * (view - grey), 0, 255).astype(np.uint8)
    params = {"homography": homography.tolist(), "angle": round(angle, 2), "perspective": round(persp, 3),
              "zoom": round(ow / cw, 3),
              "crop_side": round(side, 3), "occluder": occluder, "occluder_from": occluder_from,
              "hue": round(hue, 2), "gains": [round(float(g), 3) for g in gains],
              "contrast": round(contrast, 3), "brightness": round(brightness, 2),
              "saturation": round(saturation, 3), "blur": round(blur, 2),
              "jpeg_quality": int(rng.integers(20, 96)), "size": [ow, oh]}
    return view, homography, occluder, params


def lookalike(photo, reference):
    """`photo` with the colour histogram of `reference`, per channel: a hard negative for it."""
    from skimage.exposure import match_histograms

    matched = match_histograms(photo, reference, channel_axis=-1)
    return np.clip(np.rint(matched), 0, 255).astype(np.uint8)


def kept_fraction(homography, size, occluder, bbx, photo_shape):
    """Fraction of the photo pixels inside `bbx` that appear in the view (not cropped, not occluded)."""
    ow, oh = size
    visible = np.ones((oh, ow), np.uint8)
    if occluder is not None:
        x1, y1, x2, y2 = occluder
        visible[y1:y2, x1:x2] = 0
    h, w = photo_shape[:2]
    back = cv2.warpPerspective(visible, np.linalg.inv(homography), (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    x1, y1, x2, y2 = (int(v) for v in bbx)
    return float(back[y1:y2, x1:x2].mean())


def grade(kept, params):
    """easy / hard / junk from the kept fraction and the strength of the change (module docstring)."""
    if kept < JUNK_BELOW:
        return "junk"
    strong = (abs(params["angle"]) > 25 or params["perspective"] > 0.12
              or params["zoom"] < 0.5 or params["zoom"] > 2.0
              or abs(params["hue"]) > STRONG_HUE or params["saturation"] == 0.0)
    return "hard" if kept < EASY_FROM or strong else "easy"


def make_benchmark(root, name="demo", seed=0, views_per_landmark=16, views_per_distractor=6,
                   landmarks=None, distractors=None, lookalikes_per_landmark=LOOKALIKES_PER_LANDMARK):
    """Write the benchmark; returns the path of gnd_<name>.pkl."""
    landmarks = LANDMARKS if landmarks is None else landmarks
    distractors = DISTRACTORS if distractors is None else distractors
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    jpg = folder / "jpg"
    jpg.mkdir(parents=True, exist_ok=True)
    photos = {p: load_photo(p) for p in landmarks + distractors}
    qimlist, queries = [], []
    for photo in landmarks:
        h, w = photos[photo].shape[:2]
        for i in range(QUERIES_PER_LANDMARK):
            qname = f"{name}_q_{photo}_{i}"
            cv2.imwrite(str(jpg / f"{qname}.jpg"), photos[photo], [cv2.IMWRITE_JPEG_QUALITY, 95])
            qimlist.append(qname)
            queries.append({"photo": photo, "bbx": query_box(rng, w, h)})
    patches = [photos[p] for p in distractors]
    sources = [(p, photos[p], None, views_per_landmark if p in landmarks else views_per_distractor)
               for p in landmarks + distractors]
    for photo in landmarks:  # hard negatives: distractor photos in the landmark's colours
        for v in range(lookalikes_per_landmark):
            other = distractors[int(rng.integers(len(distractors)))]
            sources.append((other, lookalike(photos[other], photos[photo]), photo, 1))
    imlist, views, seen = [], [], {}
    for photo, image_source, palette_of, count in sources:
        for _ in range(count):
            image, homography, occluder, params = random_view(rng, image_source, patches)
            tag = photo if palette_of is None else f"lookalike_{palette_of}"
            v = seen[tag] = seen.get(tag, -1) + 1
            vname = f"{name}_db_{tag}_{v:02d}"
            cv2.imwrite(str(jpg / f"{vname}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, params["jpeg_quality"]])
            kept = [kept_fraction(homography, params["size"], occluder, q["bbx"], photos[photo].shape)
                    if q["photo"] == photo and palette_of is None else 0.0 for q in queries]
            imlist.append(vname)
            views.append({"name": vname, "photo": photo, "lookalike_of": palette_of, **params,
                          "kept": [round(k, 4) for k in kept]})
    # Shuffle the database so that list order says nothing about the answer.
    order = rng.permutation(len(imlist))
    imlist, views = [imlist[i] for i in order], [views[i] for i in order]
    gnd = []
    for j, query in enumerate(queries):
        entry = {"bbx": query["bbx"], "easy": [], "hard": [], "junk": []}
        for i, view in enumerate(views):
            if view["photo"] == query["photo"] and view["lookalike_of"] is None:
                entry[grade(view["kept"][j], view)].append(i)
        gnd.append(entry)
    with open(folder / f"gnd_{name}.pkl", "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle, protocol=2)
    meta = {"seed": seed, "grading": {"junk_below": JUNK_BELOW, "easy_from": EASY_FROM},
            "queries": [{"name": n, **q} for n, q in zip(qimlist, queries)], "views": views}
    (folder / f"meta_{name}.json").write_text(json.dumps(meta, indent=1))
    return folder / f"gnd_{name}.pkl"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="demo/data", help="revisitop root to write <name>/ into")
    parser.add_argument("--name", default="demo", help="dataset name (registered in test/data/gnd.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=16, help="database views per landmark photo")
    parser.add_argument("--distractor-views", type=int, default=6, help="database views per distractor photo")
    parser.add_argument("--lookalikes", type=int, default=LOOKALIKES_PER_LANDMARK,
                        help="hard negatives per landmark: distractor views in the landmark's colours")
    args = parser.parse_args()
    path = make_benchmark(args.root, args.name, args.seed, args.views, args.distractor_views,
                          lookalikes_per_landmark=args.lookalikes)
    with open(path, "rb") as handle:
        gnd = pickle.load(handle)
    counts = {k: sum(len(g[k]) for g in gnd["gnd"]) for k in ("easy", "hard", "junk")}
    print(f"wrote {path}: {len(gnd['qimlist'])} queries, {len(gnd['imlist'])} database images, "
          f"positives per query: {counts['easy'] / len(gnd['gnd']):.1f} easy, "
          f"{counts['hard'] / len(gnd['gnd']):.1f} hard, {counts['junk'] / len(gnd['gnd']):.1f} junk")


if __name__ == "__main__":
    main()
