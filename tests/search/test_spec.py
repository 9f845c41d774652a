"""Study specs: every error one line naming the field, fractions, durations, shorthands, the model and data
shapes (built-in, class_path, Dataset classes), and fields refused where they do not belong."""

from __future__ import annotations

import itertools

from ct_tune import InputError
from ct_tune.search import StudySpec, load_spec, paper_grid, parse_duration, spec_from_dict

import pytest

MODEL = {"checkpoint": "checkpoints/net.pt"}


def error_of(data: dict) -> str:
    with pytest.raises(InputError) as error:
        spec_from_dict({"model": MODEL, **data} if "model" not in data else data)
    text = str(error.value)
    assert "\n" not in text and text.startswith("spec: "), text
    return text.removeprefix("spec: ")


def test_defaults_of_a_minimal_spec():
    spec = spec_from_dict({"model": MODEL})
    assert spec.data.name == "digits" and spec.data.seed == 0 and spec.data.is_builtin
    assert spec.search.granularity == "block" and (spec.search.beta.low, spec.search.beta.high) == (0.7, 1.0)
    assert spec.search.c == 0.5 and not spec.search.searches_c and spec.search.enqueue_baseline
    assert spec.objective_names == ["accuracy"] and spec.directions == ["maximize"]
    assert (spec.sampler.name, spec.sampler.seed, spec.sampler.constant_liar) == ("tpe", 0, True)
    assert spec.pruner.name == "none" and spec.budget.n_trials == 50 and spec.budget.timeout is None
    assert (spec.run.device, spec.run.precision, spec.run.batch_size, spec.run.trials_per_batch) == (
        "auto",
        "fp32",
        "auto",
        1,
    )
    assert spec.model.label == "checkpoints/net.pt" and spec.data.label == "digits"
    assert spec_from_dict(spec.to_dict()) == spec  # what a study stores is what every worker rebuilds
    with pytest.raises(Exception, match="frozen"):
        spec.budget.n_trials = 3  # type: ignore[misc]


def test_the_recorded_spec_holds_no_password():
    """``to_dict`` is what a study records (its Optuna attribute and ``spec.json``): the URLs keep their user
    and lose their password, which the flag, the environment, ~/.pgpass or PGPASSWORD give again."""
    secret = "s3cret-Pw-1729"
    spec = spec_from_dict(
        {
            "model": MODEL,
            "storage": f"postgresql://ctune:{secret}@db.example.org/optuna",
            "tracking_uri": f"https://ctune:{secret}@mlflow.example.org",
            "artifact_location": f"sftp://ctune:{secret}@files.example.org/mlruns",
        }
    )
    recorded = spec.to_dict()
    assert secret not in repr(recorded)
    assert recorded["storage"] == "postgresql://ctune@db.example.org/optuna"
    assert recorded["tracking_uri"] == "https://ctune@mlflow.example.org"
    assert spec.storage == f"postgresql://ctune:{secret}@db.example.org/optuna"  # the spec itself keeps it


def test_paper_grid():
    grid = paper_grid()
    assert len(grid) == 30 and grid[0] == 0.7 and grid[-1] == 0.99 and 1.0 not in grid
    assert all(round(b - a, 10) == 0.01 for a, b in itertools.pairwise(grid))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1h30m", 5400.0), (" 1h 30m 15s ", 5415.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert spec_from_dict({"model": MODEL, "budget": {"timeout": text}}).budget.timeout == seconds


@pytest.mark.parametrize("text", ["", "soon", "1d", "h", "1h30", "-5m", "1.5.2s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_fractions_in_attack_budgets():
    spec = spec_from_dict(
        {"model": MODEL, "objectives": [{"name": "adversarial", "eps": "8/255", "step_size": " 2 / 255 "}]}
    )
    (adversarial,) = spec.objectives
    assert adversarial.eps == pytest.approx(8 / 255) and adversarial.step_size == pytest.approx(2 / 255)
    assert (
        spec_from_dict({"model": MODEL, "objectives": [{"name": "adversarial", "eps": "0.5"}]}).objectives[0].eps == 0.5
    )
    assert error_of({"objectives": [{"name": "adversarial", "eps": "8/0"}]}).startswith("objectives.0.eps: got '8/0'")
    assert error_of({"objectives": [{"name": "adversarial", "eps": "-8/255"}]}).startswith("objectives.0.eps:")


def test_shorthands_for_objectives_samplers_and_pruners():
    spec = spec_from_dict({"model": MODEL, "objectives": ["accuracy", "adversarial"], "sampler": "nsga2"})
    assert spec.objective_names == ["accuracy", "adversarial"] and spec.sampler.name == "nsga2"
    assert spec.sampler.population_size == 50
    mixed = spec_from_dict(
        {"model": MODEL, "objectives": ["accuracy", {"name": "probe", "direction": "minimize"}], "sampler": "random"}
    )
    assert mixed.directions == ["maximize", "minimize"]
    assert spec_from_dict({"model": MODEL, "pruner": "median"}).pruner.n_startup_trials == 5


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {}}, "model: give model.name, model.class_path or model.checkpoint"),
        ({"serach": {}}, "unknown field 'serach' (check the spelling"),
        ({"search": {"granularty": "block"}}, "unknown field 'search.granularty'"),
        ({"sampler": {"name": "tpe", "population_size": 3}}, "unknown field 'sampler.population_size'"),
        ({"search": {"granularity": "layer"}}, "search.granularity: got 'layer'; input should be 'global'"),
        ({"search": {"beta": {"low": 0.9, "high": 0.8}}}, "search.beta: low (0.9) must be below high (0.8)"),
        ({"search": {"beta": {"low": 0, "high": 1}}}, "search.beta.low: got 0; input should be greater than 0"),
        ({"search": {"beta": {"low": 0.7, "high": 1.0, "step": 0.07}}}, "must be a multiple of step (0.07)"),
        (
            {"search": {"beta": {"low": 0.5, "high": 1, "step": 0.1, "log": True}}},
            "search.beta: step and log cannot be combined",
        ),
        ({"search": {"c": 1.5}}, "search.c: got 1.5; input should be less than or equal to 1"),
        ({"search": {"beta": {"low": 0.5, "high": 0.9}}}, "enqueue_baseline needs beta 1.0 inside beta"),
        ({"search": {"ranges": {"stem": {"low": 0.5, "high": 0.9}}}}, "needs beta 1.0 inside ranges.stem"),
        (
            {"search": {"beta": {"low": 0.8, "high": 1.0}, "enqueue_paper_grid": True}},
            "enqueue_paper_grid needs 0.70..0.99 inside beta; 0.7 is outside [0.8, 1.0]",
        ),
        ({"objectives": ["accuracy", "speed"]}, "objectives.1.name: got 'speed'; expected one of 'accuracy'"),
        ({"objectives": ["accuracy", "accuracy"]}, "each objective may appear once; got accuracy, accuracy"),
        ({"objectives": []}, "objectives: got []; list should have at least 1 item"),
        ({"objectives": ["accuracy", "probe"], "pruner": "median"}, "pruning needs a single objective"),
        ({"run": {"trials_per_batch": 2}, "pruner": "median"}, "run.trials_per_batch: 2 scores trials together"),
        ({"objectives": ["accuracy", "probe"], "sampler": "cmaes"}, "the cmaes sampler handles a single objective"),
        ({"sampler": "grid", "search": {"c": {"low": 0, "high": 1}}}, "the grid sampler needs a fixed c"),
        ({"sampler": "grid", "search": {"ranges": {"stem": {"low": 0.8, "high": 1}}}}, "remove search.ranges"),
        ({"sampler": "bayes"}, "sampler.name: got 'bayes'; expected one of 'tpe', 'gp', 'cmaes'"),
        ({"sampler": {"name": "nsga2", "population_size": 1}}, "sampler.population_size: got 1"),
        ({"pruner": {"name": "successive_halving", "min_resource": "often"}}, "pruner.min_resource: got 'often'"),
        ({"budget": {"n_trials": None}}, "set budget.n_trials or budget.timeout (or both)"),
        ({"budget": {"n_trials": 0}}, "budget.n_trials: got 0; input should be greater than 0"),
        (
            {"budget": {"n_trials": 10}, "search": {"enqueue_paper_grid": True}},
            "budget.n_trials (10) is smaller than the 31 enqueued trials",
        ),
        ({"budget": {"timeout": "soon"}}, "budget.timeout: 'soon' is not a duration"),
        ({"budget": {"timeout": "0s"}}, "budget.timeout: got 0.0; input should be greater than 0"),
        ({"run": {"precision": "int8"}}, "run.precision: got 'int8'; input should be 'fp32', 'bf16' or 'fp16'"),
        ({"run": {"trials_per_batch": 0}}, "run.trials_per_batch: got 0"),
        ({"run": {"device": "tpu"}}, "run.device: got 'tpu'; use auto, cpu, cuda, cuda:N or a list like cuda:0,cuda:1"),
        ({"run": {"device": "cuda:x"}}, "run.device: got 'cuda:x'"),
        ({"run": {"device": "cpu,cuda:0"}}, "run.device: got 'cpu,cuda:0'"),
        (
            {"run": {"device": "cpu", "precision": "fp16"}},
            "run: precision fp16 applies on CUDA only, and device is cpu: set run.precision: fp32, or run.device",
        ),
        ({"name": ""}, "name: it is empty; use 1 to 100 letters, digits"),
        ({"name": "../../tmp/evil"}, "name: '../../tmp/evil' starts with '.'; use 1 to 100 letters"),
        ({"name": "a/b"}, "name: 'a/b' has other characters"),
        ({"name": "x" * 101}, "name: it has 101 characters"),
        ({"search": {"c": float("nan")}}, "search.c: got nan; input should be a finite number"),
        ({"budget": {"timeout": float("inf")}}, "budget.timeout: got inf; input should be a finite number"),
    ],
)
def test_every_error_is_one_line_naming_the_field(data, message):
    assert message in error_of(data)


def test_a_mapping_that_is_not_a_spec():
    for data in (None, [1, 2], "model: x"):
        with pytest.raises(InputError, match="a study spec is a YAML mapping"):
            spec_from_dict(data, source="my.yaml")


def test_a_searched_c_range_reports_its_own_problem():
    assert "search.c: low (0.8) must be below high (0.2)" in error_of({"search": {"c": {"low": 0.8, "high": 0.2}}})


def test_cmaes_options_optuna_refuses_are_refused_by_the_spec():
    message = error_of({"sampler": {"name": "cmaes", "use_separable_cma": True, "with_margin": True}})
    assert "sampler" in message and "with_margin" in message


# --------------------------------------------------------------------------------------------------
# Model shapes
def test_model_shapes():
    user = spec_from_dict(
        {
            "model": {
                "class_path": "mypkg.nets.Net",
                "init_args": {"width": 8},
                "checkpoint": "lightning.ckpt",
                "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]},
            }
        }
    ).model
    assert user.class_path == "mypkg.nets.Net" and user.init_args == {"width": 8} and user.label == "mypkg.nets.Net"
    assert user.normalization.pair() == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    named = spec_from_dict({"model": {"name": "resnet18", "weights": "IMAGENET1K_V1", "input_size": 64}}).model
    assert named.label == "resnet18" and named.input_size == 64
    assert spec_from_dict({"model": {"name": "resnet18", "checkpoint": "sd.pt"}}).model.checkpoint == "sd.pt"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "resnet18", "class_path": "a.B"}, "give model.name or model.class_path, not both"),
        ({"weights": "IMAGENET1K_V1"}, "give model.name, model.class_path or model.checkpoint"),
        ({"name": "resnet18", "init_args": {"a": 1}}, "model.init_args go with model.class_path"),
        ({"checkpoint": "c.pt", "init_args": {"a": 1}}, "model.init_args go with model.class_path"),
        ({"name": "resnet18", "normalization": {"mean": [0.5], "std": [0.5]}}, "model.normalization is for class_path"),
        ({"class_path": "a.B", "weights": "IMAGENET1K_V1"}, "a class_path model takes model.checkpoint"),
        ({"class_path": "a.B", "normalization": {"mean": [0.5, 0.5], "std": [0.5]}}, "got 2 and 1"),
        ({"class_path": "a.B", "normalization": {"mean": [0.5], "std": [0.0]}}, "std values must be positive"),
        ({"class_path": "a.B", "normalization": {"mean": [], "std": []}}, "model.normalization.mean: got []"),
        ({"checkpoint": "c.pt", "input_size": 0}, "model.input_size: got 0"),
    ],
)
def test_model_errors(model, message):
    assert message in error_of({"model": model})


# --------------------------------------------------------------------------------------------------
# Data shapes
def test_data_shapes():
    builtin = spec_from_dict({"model": MODEL, "data": {"seed": 3, "val_fraction": 0.2, "download": True}}).data
    assert builtin.name == "digits" and builtin.seed == 3 and builtin.val_fraction == 0.2  # digits by default
    module = spec_from_dict(
        {
            "model": MODEL,
            "data": {
                "class_path": "mypkg.data.DM",
                "init_args": {"root": "/data"},
                "batch_keys": {"input": "image", "target": "label"},
                "normalization": {"mean": [0.1], "std": [0.3]},
                "num_classes": 7,
                "val_size": 100,
            },
        }
    ).data
    assert not module.is_builtin and module.label == "mypkg.data.DM" and module.init_args == {"root": "/data"}
    assert module.batch_keys.input == "image" and module.num_classes == 7
    splits = spec_from_dict(
        {
            "model": MODEL,
            "data": {
                "train": {"class_path": "mypkg.data.Train", "init_args": {"n": 10}},
                "val": {"class_path": "mypkg.data.Val"},
            },
        }
    ).data
    assert splits.val.class_path == "mypkg.data.Val" and splits.train.init_args == {"n": 10} and splits.test is None
    assert splits.label == "mypkg.data.Val" and not splits.is_builtin


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "digits", "class_path": "a.DM"}, "give one of data.name (built-in), data.class_path"),
        ({"name": "digits", "val": {"class_path": "a.D"}}, "give one of data.name (built-in)"),
        ({"train": {"class_path": "a.D"}}, "Dataset classes need at least data.val"),
        ({"name": "digits", "num_classes": 10}, "data.num_classes is for your own data (class_path or Dataset"),
        ({"name": "digits", "batch_keys": {"input": "x", "target": "y"}}, "data.batch_keys is for your own data"),
        ({"name": "digits", "init_args": {"a": 1}}, "data.init_args is for your own data"),
        ({"name": "digits", "normalization": {"mean": [0], "std": [1]}}, "data.normalization is for your own data"),
        ({"class_path": "a.DM", "val_fraction": 0.2}, "data.val_fraction applies to built-in datasets"),
        ({"class_path": "a.DM", "data_dir": "/data"}, "data.data_dir applies to built-in datasets"),
        ({"val": {"class_path": "a.D"}, "download": True}, "data.download applies to built-in datasets"),
        ({"val": {"class_path": "a.D"}, "test_fraction": 0.1}, "data.test_fraction applies to built-in datasets"),
        ({"val": {"class_path": "a.D"}, "init_args": {"x": 1}}, "data.init_args go with data.class_path"),
        ({"val": {"class_path": "a.D", "args": {}}}, "unknown field 'data.val.args'"),
        ({"val": {"class_path": ""}}, "data.val.class_path: got ''"),
        ({"val_fraction": 1.0}, "data.val_fraction: got 1.0; input should be less than 1"),
        ({"class_path": "a.DM", "batch_keys": {"input": "x"}}, "data.batch_keys.target: required field is missing"),
    ],
)
def test_data_errors(data, message):
    assert message in error_of({"data": data})


def test_an_empty_data_class_path_is_refused():
    assert "data.class_path" in error_of({"data": {"class_path": ""}})


# --------------------------------------------------------------------------------------------------
# Files
@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "CUDA:0", "cuda:0,cuda:1"])
def test_device_spellings_that_pass_without_a_gpu(device):
    """Only the spelling is checked at create: the machine that runs the study may have the GPUs."""
    assert spec_from_dict({"model": MODEL, "run": {"device": device}}).run.device == device.lower()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "name: a\nmodel: {checkpoint: c.pt}\nname: b\n",
            "at line 3, column 1: key 'name' given twice (first at line 1)",
        ),
        (
            "model: {checkpoint: c.pt}\nbudget:\n  n_trials: 3\n  n_trials: 4\n",
            "at line 4, column 3: key 'n_trials' given twice (first at line 3)",
        ),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path, text, line):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_spec(path)
    assert str(error.value) == f"{path} is not valid YAML {line}; keep one"


def test_keys_merged_with_an_anchor_may_be_overridden(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "x-run: &run {batch_size: 64, device: cpu}\nmodel: {checkpoint: c.pt}\nrun: {<<: *run, batch_size: 32}\n"
    )
    with pytest.raises(InputError, match="unknown field 'x-run'"):  # the merge itself is accepted
        load_spec(path)
    path.write_text(
        "model: &m {checkpoint: c.pt}\nrun: {batch_size: 32}\nsearch: {<<: {granularity: block}, granularity: stage}\n"
    )
    assert load_spec(path).search.granularity == "stage"


def test_load_spec_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"spec file .*missing\.yaml does not exist"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  checkpoint: [unclosed\n")
    with pytest.raises(InputError) as error:
        load_spec(bad)
    assert str(error.value).startswith(f"{bad} is not valid YAML at line ") and "\n" not in str(error.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x00garbage")
    with pytest.raises(InputError, match="is not a text file"):
        load_spec(binary)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: {checkpoint: c.pt}\nbudget: {n_trails: 5}\n")
    with pytest.raises(InputError, match=f"^{typo}: unknown field 'budget.n_trails'"):
        load_spec(typo)
    good = tmp_path / "good.yaml"
    good.write_text("model: {checkpoint: c.pt}\nobjectives: [accuracy]\nbudget: {timeout: 15m}\n")
    assert isinstance(load_spec(good), StudySpec) and load_spec(good).budget.timeout == 900
