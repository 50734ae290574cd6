"""The report stage: one markdown page with the data summary, training curve, metrics and sample grids."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from handloom import schema
from handloom.draw import GT_COLOR, MP_COLOR, draw_keypoints, markdown_table, pose_image, save_png, tile
from handloom.evaluate.pipeline import SAMPLES_FILE, choose_pairs
from handloom.generate import MODES, generate, load_generator
from handloom.io import read_table, remove_torn_writes, write_bytes
from handloom.logs import phase
from handloom.params import EvaluateParams, Params, ReportParams, TrainParams
from handloom.report.render import plot_series, read_dvclive_series, read_json
from handloom.shards.reader import read_sample
from handloom.train.fit import CHECKPOINT

FIGURES = "figures"
CELL = 128


def generated_grid(samples: dict, rows: int) -> np.ndarray:
    """reference | target pose | generated | untrained | target | MediaPipe on generated (red) vs target (green),
    the rows taken in turn from each dataset evaluated."""
    res = samples["target"].shape[1]
    out = []
    for i in spread_over_datasets(samples["keys"], rows):
        overlay = draw_keypoints(draw_keypoints(samples["generated"][i], samples["target_keypoints"][i], GT_COLOR),
                                 samples["generated_keypoints"][i], MP_COLOR)
        out.append([samples["reference"][i], pose_image(samples["target_keypoints"][i], res, 1.0),
                    samples["generated"][i], samples["untrained"][i], samples["target"][i], overlay])
    return tile(out, CELL, ["reference", "target pose", "generated", "untrained", "target", "keypoints"])


def spread_over_datasets(keys, n: int) -> list[int]:
    """Up to n row numbers: each dataset's first, then each one's second, ...; rows in order for one dataset."""
    datasets = [schema.SampleKey.parse(str(k)).dataset for k in keys]
    rank = {}
    order = []
    for i, d in enumerate(datasets):
        rank[d] = rank.get(d, -1) + 1
        order.append((rank[d], sorted(set(datasets)).index(d), i))
    return [i for *_, i in sorted(order)[:n]]


def dataset_grid(shards_dir: Path, dataset: str, n: int = 12, per_row: int = 6) -> np.ndarray | None:
    """Shard samples of one dataset, evenly spread over it, with its ground-truth keypoints (green) and
    MediaPipe's (red); without ground truth the keypoints are MediaPipe's, drawn red only. Full rows of per_row
    cells (or one shorter row), so every cell holds a sample; None when the dataset has no sample."""
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas()
    rows = index[index.dataset == dataset]
    count = len(rows) if len(rows) <= per_row else min(n, len(rows) - len(rows) % per_row)
    if not count:
        return None
    rows = rows.iloc[:: max(1, len(rows) // count)].head(count)
    cells = []
    for r in rows.itertuples():
        s = read_sample(shards_dir, r.shard, int(r.offset))
        image = draw_keypoints(s["image"], s["keypoints"], GT_COLOR) if r.has_gt else s["image"]
        cells.append(draw_keypoints(image, np.asarray(s["meta"]["mp_keypoints"], np.float32), MP_COLOR))
    per_row = min(per_row, count)
    return tile([cells[i:i + per_row] for i in range(0, len(cells), per_row)], 192)


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    out = image.copy()
    cv2.putText(out, text, (4, 4 + out.shape[0] // 12), cv2.FONT_HERSHEY_SIMPLEX, out.shape[0] / 320, (255, 255, 255),
                max(1, out.shape[0] // 128), cv2.LINE_AA)
    return out


def generate_examples_grid(models_dir: Path, shards_dir: Path, train_p: TrainParams, evaluate_p: EvaluateParams,
                           per_mode: int = 2) -> np.ndarray | None:
    """Held-out pose and view pairs (of those evaluate chose) through `handloom generate`'s API, sampled as the
    evaluate stage samples: reference | target pose | generated | target. None when there are none."""
    seed = evaluate_p.seed
    pairs = choose_pairs(shards_dir, evaluate_p.n_pairs, seed)
    pairs = pairs[pairs.kind.isin(MODES)].groupby("kind", sort=True).head(per_mode)
    if pairs.empty:
        return None
    model = load_generator(models_dir / CHECKPOINT, train_p, device="cpu")
    sampling = dict(evaluate_p.sampling(), seed=seed)
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas().set_index("key")

    def sample(key: str) -> dict:
        return read_sample(shards_dir, index.loc[key, "shard"], int(index.loc[key, "offset"]))

    rows = []
    for reference_key, target_key, mode in pairs[["reference", "target", "kind"]].itertuples(index=False):
        reference, target = sample(reference_key), sample(target_key)
        side = target["image"].shape[0]
        generated = generate(reference["image"], target["keypoints"], mode, model=model, target_size=(side, side),
                             reference_keypoints=reference["keypoints"], reference_mask=reference["mask"], **sampling)
        rows.append([labelled(reference["image"], mode), pose_image(target["keypoints"], side, 1.0), generated,
                     target["image"]])
    return tile(rows, CELL, ["reference", "target pose", "generated", "target"])


def sharded_datasets(shards_dir: Path) -> list[str]:
    """The datasets the shard stage was given (those enabled in params.yaml), each with its record in stats/,
    whether or not any of its samples survived."""
    suffix = schema.DATASET_RECORD_FILE.format(dataset="")
    recorded = sorted(p.name[:-len(suffix)] for p in (shards_dir / schema.STATS_DIR).glob(f"*{suffix}"))
    return recorded or sorted(read_table(shards_dir / schema.INDEX_FILE).column("dataset").unique().to_pylist())


def data_section(reports_dir: Path, datasets: list[str]) -> str:
    """One row per enabled dataset: a removed dataset's reports/data/<name>.json may still lie there."""
    rows = [dict(dataset=name, **read_json(reports_dir / "data" / f"{name}.json")) for name in datasets]
    return markdown_table(rows, ["dataset", "images", "annotated", "rejected", "hands_detected", "detection_rate",
                                 "pck_0_2"])


def data_figures(shards_dir: Path, datasets: list[str], figures: Path) -> list[str]:
    """A grid per dataset, and the markdown lines showing them; a dataset without ground truth is not
    captioned as having it."""
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas()
    lines = []
    for name in datasets:
        grid = dataset_grid(shards_dir, name)
        if grid is None:
            lines.append(f"{name}: no sample reached the shards (see reports/data/{name}.json for the rejects).")
            continue
        save_png(figures / f"data_{name}.png", grid)
        drawn = "exact keypoints green, MediaPipe red" if index.has_gt[index.dataset == name].any() else \
            "no ground truth, MediaPipe keypoints red"
        lines.append(f"![{name} samples: {drawn}]({FIGURES}/data_{name}.png)")
    return lines


def metric_row(scores: dict) -> dict:
    """One table row from a metrics.json block; LPIPS only when the evaluate stage had its weights."""
    h, untrained = scores["hands"], scores["untrained"]
    perceptual = dict(lpips=scores["lpips"], lpips_untrained=untrained["lpips"]) if "lpips" in scores else {}
    return dict(psnr=scores["psnr"], psnr_untrained=untrained["psnr"], ssim=scores["ssim"],
                ssim_untrained=untrained["ssim"], **perceptual, hands_detected=h["detection_rate"],
                hands_detected_untrained=untrained.get("hands", {}).get("detection_rate"),  # older metrics.json: none
                confidence=h["detection_confidence"], pck_0_2=h["pck_0_2"], mpjpe=h["mpjpe"],
                joint_ratio_diff=h["joint_ratio_difference"])


def metrics_table(blocks: dict[str, dict], label: str) -> str:
    """A table with one row per metrics block, the first column (`label`) naming it."""
    rows = [{label: name, **metric_row(scores)} for name, scores in blocks.items()]
    return markdown_table(rows, list(rows[0]))


def pairs_section(m: dict) -> list[str]:
    """Per dataset, the split its held-out pairs came from and how many of each kind; which use self pairs only."""
    used = m.get("pairs_used")
    if not used:  # an older metrics.json
        return []
    rows = [dict(dataset=name, **counts) for name, counts in sorted(used.items())]
    lines = ["Pairs evaluated per dataset (its val split, else test, else a hashed hold-out of its sequences):", "",
             markdown_table(rows, ["dataset", "split", *schema.PAIR_KINDS]), ""]
    alone = [r["dataset"] for r in rows if r["self"] and not any(r[k] for k in schema.PAIR_KINDS if k != "self")]
    if alone:
        lines += [f"{', '.join(alone)}: no pose or view pairs held out, so self pairs (the target as its own "
                  "reference) stand in for them.", ""]
    return lines


def metrics_section(m: dict) -> list[str]:
    """Metrics over all pairs and per pair kind, then per dataset; "–" where a metric has no value."""
    lines = [*pairs_section(m), metrics_table({"all": m, **dict(sorted(m.get("per_kind", {}).items()))}, "pairs"), ""]
    if m.get("per_dataset"):
        lines += ["Per dataset (of the target):", "", metrics_table(dict(sorted(m["per_dataset"].items())), "dataset"),
                  ""]
    if "fid" in m:  # over all pairs, on the hand pixels
        rows = [{"model": name, **{k: s[k] for k in ("fid", "kid_mean", "kid_std")}}
                for name, s in (("trained", m), ("untrained", m["untrained"]))]
        lines += ["FID / KID on the hand pixels (Inception features, dim 192):", "",
                  markdown_table(rows, list(rows[0])), ""]
    return lines


def generate_section(models_dir: Path | None, shards_dir: Path, params: Params, figures: Path) -> list[str]:
    """The "Generate examples" panel, when there is a trained model to draw it with and held-out pose or view
    pairs to draw."""
    if models_dir is None or not (models_dir / CHECKPOINT).exists():
        return []
    grid = generate_examples_grid(models_dir, shards_dir, params.train, params.evaluate)
    if grid is None:
        return ["## Generate examples", "", "No held-out pose or view pair to show.", ""]
    save_png(figures / "generate.png", grid)
    return ["## Generate examples", "",
            "Held-out pairs through `handloom generate` (`handloom.generate.generate`), labelled with their mode: "
            "the reference's hand in the target's pose, or seen from the target's camera. See README, Generate.", "",
            f"![reference, target pose, generated, target]({FIGURES}/generate.png)", ""]


def build_report(reports_dir: Path, eval_dir: Path, shards_dir: Path, p: ReportParams, models_dir: Path | None = None,
                 params: Params | None = None) -> None:
    """`models_dir` adds the generate examples, drawn with `params` (train and evaluate: what the model was trained
    and evaluated with)."""
    figures = reports_dir / FIGURES
    remove_torn_writes(figures)
    samples = dict(np.load(eval_dir / SAMPLES_FILE))
    with phase("report", "evaluation grid"):
        save_png(figures / "generated.png", generated_grid(samples, p.grid_rows))
    datasets = sharded_datasets(shards_dir)
    with phase("report", f"data grids of {', '.join(datasets)}"):
        data_lines = data_figures(shards_dir, datasets, figures)
    with phase("report", "loss plot"):
        series = read_dvclive_series(reports_dir / "train" / "plots" / "metrics")
        plot_series({k: v for k, v in series.items() if k.endswith("loss")}, figures / "loss.png")
    m, train = read_json(reports_dir / "metrics.json"), read_json(reports_dir / "train" / "metrics.json")
    real = m["hands_on_real_targets"]
    lines = [
        "# handloom run report", "",
        "Generated by `dvc repro` (stage `report`); `make report-diff BASE=<rev>` compares two revisions.", "",
        "## Data", "", data_section(reports_dir, datasets), "",
        "Detection rate and PCK@0.2 (of the hand box) are MediaPipe's agreement with each dataset's ground truth.", "",
        *data_lines, "",
        "## Training", "", f"Final step {train.get('step', '?')}.", "", f"![training loss]({FIGURES}/loss.png)", "",
        "## Evaluation", "",
        f"{m['n_pairs']} held-out reference → target pairs at {m['resolution']} px; the untrained model is the same "
        "architecture and seed before training, sampled the same way.", "",
        *metrics_section(m),
        f"MediaPipe finds {real['detection_rate']:.0%} of the hands in the real targets at this resolution, "
        "the ceiling for the generated ones.", "",
        f"![reference, target pose, generated, untrained, target, keypoints]({FIGURES}/generated.png)", "",
    ]
    with phase("report", "generate examples"):
        lines += generate_section(models_dir, shards_dir, params or Params(), figures)
    remove_torn_writes(reports_dir / "report.md")
    write_bytes(reports_dir / "report.md", "\n".join(lines).encode())
