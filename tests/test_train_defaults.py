"""One definition of every training setting: params.yaml holds the values, TrainParams the only defaults (equal to
them), and the code that trains takes every setting from TrainParams, with no defaults of its own."""
import ast
from pathlib import Path

import yaml
from pydantic import BaseModel

from handloom.params import AugmentParams, ModelParams, TrainParams

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "handloom"
# Where training settings are consumed: the Lightning module and the train stage, the loader's example spec, the
# generator that rebuilds a trained module. model/ (DiT, GaussianDiffusion) is out of scope on purpose: building
# blocks keep their papers' signatures (nanoGPT: the model knows nothing of training), and build_model passes
# every one of their arguments explicitly.
TRAINING_CODE = [*sorted((SRC / "train").glob("*.py")), SRC / "generate.py", SRC / "shards" / "reader.py"]
SETTINGS = set(TrainParams.model_fields) | set(ModelParams.model_fields) | set(AugmentParams.model_fields)
# Same name, another thing: each with the reason it is not a training setting.
OTHER_MEANINGS = {
    ("latents.py", "encode_latents", "batch_size"): "images per VAE forward in encode_latents, not train.batch_size",
    ("reader.py", "ExampleSpec", "augment"): "None = no augmentation (evaluation, cached latents), not a default",
    ("reader.py", "pair_dataset", "seed"): "the shard-streaming recipe's own seed (README), not the train stage's",
    **{("generate.py", where, "seed"): "a sampling seed of `handloom generate`, not train.seed"
       for where in ("generate", "Pair", "folder_pairs", "parquet_pairs")},
}


def keys(section: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in section.items():
        out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        nested = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        out |= fields(info.annotation, f"{prefix}{name}.") if nested else {prefix + name}
    return out


def test_params_yaml_sets_every_training_setting_to_the_default():
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    assert keys(train) == fields(TrainParams)  # every knob is reachable from, and written in, params.yaml
    assert TrainParams.model_validate(train) == TrainParams()  # ... with TrainParams' defaults as its values


def defaults_named_like_settings(path: Path) -> list[tuple[str, str, str]]:
    """(file, function or class, name) for every parameter default or class field default named like a setting."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            named = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            named += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [(path.name, node.name, a.arg) for a, _ in named if a.arg in SETTINGS]
        elif isinstance(node, ast.ClassDef):
            found += [(path.name, node.name, s.target.id) for s in node.body
                      if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None
                      and s.target.id in SETTINGS]
    return found


def test_training_code_has_no_defaults_of_its_own():
    found = [hit for path in TRAINING_CODE for hit in defaults_named_like_settings(path)]
    assert [hit for hit in found if hit not in OTHER_MEANINGS] == []
    assert set(OTHER_MEANINGS) <= set(found)  # the exceptions still exist; drop them when they go


def test_the_check_finds_a_second_set_of_defaults(tmp_path):
    # What the train module held before: a dataclass of its own defaults for the same settings.
    old = tmp_path / "module.py"
    old.write_text("@dataclass\nclass TrainConfig:\n    lr: float = 1e-4\n    depth: int = 4\n"
                   "    input_size: int = 64\n\n\ndef build(seed=0, *, mask_head=True):\n    pass\n")
    assert defaults_named_like_settings(old) == [
        ("module.py", "TrainConfig", "lr"), ("module.py", "TrainConfig", "depth"), ("module.py", "build", "seed"),
        ("module.py", "build", "mask_head")]
