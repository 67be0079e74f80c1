"""One source of truth per setting: each experiment-config field declares its flag, default and
rerun rule once; the flags, the ``run --config`` overrides, the docstring table, the manifest's
comparison and the error messages' flags are derived from it -- these tests fail where a
derivation breaks."""

import json
import os
import re

import pytest

from jaxclip_fs import cli
from jaxclip_fs.commands import flags
from jaxclip_fs.commands.run import config_of_file
from jaxclip_fs.engine import outdir
from jaxclip_fs.errors import ConfigError
from jaxclip_fs.experiment import config as config_lib
from jaxclip_fs.experiment import reproduction
from jaxclip_fs.experiment import settings as settings_lib
from jaxclip_fs.features import featfile
from jaxclip_fs.features.synthetic import make_task

from helpers import REPO
from test_sweep import read_records

SETTINGS = config_lib.SETTINGS
FLAGGED = [s for s in SETTINGS if s.flag]


def _parser_flags(command: str) -> set[str]:
    sub = cli.build_parser()._subparsers._group_actions[0].choices[command]
    return {option for action in sub._actions for option in action.option_strings}


def test_every_field_declares_one_rule_and_at_most_one_flag_which_run_has():
    assert {s.rerun for s in SETTINGS} <= set(settings_lib.RERUN_RULES)
    assert len({s.flag for s in FLAGGED}) == len(FLAGGED)  # one field per flag
    assert set(flags.SPECS) == {s.path for s in FLAGGED}  # how each flag reads, none extra
    assert {s.flag for s in FLAGGED} <= _parser_flags("run")
    assert [s.path for s in SETTINGS if not s.flag] == ["images.aug_scale"]  # config file only
    for s in SETTINGS:  # the declared default is the dataclass default
        assert settings_lib.get(config_lib.ExperimentConfig(), s.path) == s.default


def test_flags_left_out_give_the_declared_defaults(tmp_path):
    args = cli.build_parser().parse_args(["run", "--features", "x.npz", "--out", "o"])
    config = flags.field_values(args)
    set_by_flags = {"data.features"}
    assert set(config) - set_by_flags == {  # only the fields whose defaults are not None
        s.path for s in FLAGGED if s.default is not None and s.path not in flags.OWN_PARSING
        and s.path not in set_by_flags}
    for path, value in config.items():
        if path not in set_by_flags:
            assert value == config_lib.declaration(path).default, path


def _table_rules() -> dict[str, str]:
    """field path -> rule, as the config module's docstring table says."""
    lines = config_lib.__doc__.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.startswith("=====")]
    first, last = rule_lines[1], rule_lines[2]
    starts = [m.start() for m in re.finditer(r"=+", lines[rule_lines[0]])]
    found, section, rule = {}, None, None
    for line in lines[first + 1:last]:
        name, fields, said = (line[a:b].strip() for a, b in zip(starts, starts[1:] + [None]))
        section, rule = name or section, said or rule  # (a row continued on the next line)
        top = [s.path for s in SETTINGS if s.path == section]
        if top:
            found[section] = rule
            continue
        for field in re.findall(r"[a-z_]+", re.sub(r"\([^)]*\)", "", fields)):
            found[f"{section}.{field}"] = rule
    return found


def test_the_docstring_table_is_the_declarations():
    assert _table_rules() == {s.path: s.rerun for s in SETTINGS}


def test_config_overrides_are_the_flags_of_fields_a_rerun_may_change():
    assert set(flags.config_overridable()) == {
        s.flag for s in SETTINGS if s.rerun in ("free", "input")}
    assert "--fuse-datasets" in flags.config_overridable()  # execution is free
    assert not {"--shots", "--views", "--weights", "--compute-dtype"} & set(
        flags.config_overridable())


def _sample(path: str, tmp_path) -> list[str]:
    spec = flags.SPECS[path]
    if spec.store_true:
        return []
    if spec.choices:
        return [spec.choices[-1]]
    if path == "execution.plan":
        return ["per-shots"]
    if spec.type in (int, float):
        return ["3"]
    return [str(tmp_path / path)]


@pytest.fixture
def saved_config(tmp_path):
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("tip_adapter"),),
        data=config_lib.DataConfig(datasets=("digits",)),
        model=config_lib.ModelConfig(backbone="tiny-vit", weights="random"))
    path = tmp_path / "config.json"
    config_lib.save(path, config)
    return str(path), config


@pytest.mark.parametrize("path", [s.path for s in FLAGGED])
def test_run_config_accepts_exactly_the_changeable_flags(path, saved_config, tmp_path):
    file, config = saved_config
    s = config_lib.declaration(path)
    argv = ["run", "--config", file, "--out", "o", s.flag, *_sample(path, tmp_path)]
    args = cli.build_parser().parse_args(argv)
    if s.rerun in ("free", "input"):
        changed = config_of_file(file, args, flags.given_flags(argv))
        expected = flags.field_values(args, given={s.flag})[path]
        assert settings_lib.get(changed, path) == expected
        assert changed == settings_lib.with_values(config, {path: expected})  # nothing else
    else:
        with pytest.raises(ConfigError, match=rf"^{s.flag} cannot be combined with --config: "
                                              rf".* sets {re.escape(path)} \(a {s.rerun}"):
            config_of_file(file, args, flags.given_flags(argv))


def test_run_takes_no_abbreviated_flags(saved_config):
    """``--config`` knows the flags given by their full names: ``--shot 4`` may not slip by."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--config", saved_config[0], "--out", "o",
                                       "--shot", "4"])


def _features(tmp_path, names=("oxford_pets", "dtd")):
    paths = []
    for seed, name in enumerate(names):
        paths.append(str(tmp_path / f"{name}.npz"))
        featfile.save(paths[-1], make_task(seed, num_classes=3, dim=8, shots=2, views=2,
                                           val_per_class=3, test_per_class=4, dataset=name))
    return paths


def test_run_config_with_fuse_datasets_is_accepted_and_gives_the_same_records(tmp_path):
    first = str(tmp_path / "first")
    assert cli.main(["run", "--features", *_features(tmp_path), "--method", "tip_adapter",
                     "--shots", "1,2", "--seeds", "1", "--out", first, "--quiet",
                     "--no-report"]) == 0
    again = str(tmp_path / "again")
    assert cli.main(["run", "--config", os.path.join(first, "config.json"), "--fuse-datasets",
                     "--out", again, "--quiet", "--no-report"]) == 0
    assert config_lib.load(os.path.join(again, "config.json")).execution.fuse_datasets
    a, b = read_records(first), read_records(again)
    assert a.keys() == b.keys() and len(a) == 4
    assert all(a[c]["accuracy"] == b[c]["accuracy"] for c in a)


def test_a_changed_fixed_field_is_refused_on_rerun_naming_field_and_flag(tmp_path, capsys):
    files = _features(tmp_path, ("dtd",))
    out = str(tmp_path / "run")
    argv = ["run", "--features", *files, "--method", "tip_adapter", "--shots", "1",
            "--seeds", "1", "--out", out, "--quiet", "--no-report"]
    assert cli.main(argv + ["--views", "2"]) == 0
    manifest = outdir.read_manifest(out)
    changed = config_lib.load(os.path.join(out, "config.json"))
    changed = settings_lib.with_values(changed, {"extraction.views": 3})
    with pytest.raises(ConfigError, match=r"was run with extraction\.views = 2, not 3"):
        outdir.merge_manifest(out, changed, old=manifest)
    capsys.readouterr()
    assert cli.main(argv + ["--views", "3"]) == 2
    err = capsys.readouterr().err
    assert "was run with --views = 2, not 3" in err and err.count("\n") == 1
    # free fields change without complaint
    assert cli.main(argv + ["--views", "2", "--workers", "1", "--fuse-datasets"]) == 0


def test_manifests_from_before_a_field_existed_or_moved_still_compare():
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("tip_adapter"),),
        data=config_lib.DataConfig(features=("/x.npz",)))
    written = outdir.merge_manifest("DIR", config, old=None)
    old = json.loads(json.dumps(written))
    settings = old["settings"]
    settings["source"] = settings.pop("data")["source"]  # where earlier versions kept it
    del settings["train_dtype"]  # written before mixed precision: float32
    assert outdir.settings_difference(old, written["settings"]) is None
    bf16 = settings_lib.with_values(config, {"train_dtype": "bfloat16"})
    assert outdir.settings_difference(old, outdir.merge_manifest(
        "DIR", bf16, old=None)["settings"]) == ("train_dtype", "float32", "bfloat16")


def test_grid_lists_are_the_grid_fields_by_axis():
    config = config_lib.ExperimentConfig(
        methods=(config_lib.MethodConfig("ldc", {"fusion": ["fixed", "concat"]}),),
        data=config_lib.DataConfig(datasets=("dtd", "digits"), ood=("imagenet_v2",)),
        protocol=config_lib.ProtocolConfig(names=("fair", "paper")),
        grid=config_lib.GridConfig(shots=(1, 4), seeds=(2,)))
    assert config.grid_lists() == {
        "methods": ["ldc", "ldc[fusion=concat]"], "datasets": ["dtd", "digits"],
        "ood": ["imagenet_v2"], "protocols": ["fair", "paper"], "shots": [1, 4], "seeds": [2]}
    assert set(outdir.GRID_KEYS) == {s.axis for s in SETTINGS if s.rerun == "grid"}


def test_library_errors_name_fields_and_the_cli_writes_flags(tmp_path, capsys):
    assert flags.to_flags("execution.devices: 4 asked; choose another execution.cache_dir or "
                          "execution.use_cache=false; model.weights random; a.extraction.views") \
        == "--devices: 4 asked; choose another --cache-dir or --no-cache; --weights random; " \
           "a.extraction.views"
    assert flags.to_flags("model.weights x, model.backbone y", only={"--weights"}) == \
        "--weights x, model.backbone y"
    assert flags.to_flags("give one (hp ldc.alpha=VALUE); hp {}") == \
        "give one (--hp ldc.alpha=VALUE); hp {}"
    files = _features(tmp_path, ("dtd",))
    assert cli.main(["run", "--features", *files, "--method", "tip_adapter", "--views", "-1",
                     "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --views must be >= 0, got -1\n"


def test_no_library_error_names_a_config_flag():
    """Library errors name config fields; only the CLI (cli.py, commands/) writes flags."""
    config_flags = re.compile("|".join(re.escape(s.flag) + r"\b" for s in FLAGGED))
    package = os.path.join(REPO, "jaxclip_fs")
    found = []
    for folder, _, names in os.walk(package):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, package)
            if not name.endswith(".py") or relative in ("cli.py", os.path.join("train", "imo.py")) \
                    or relative.startswith("commands" + os.sep):
                continue  # (train/imo.py: the train-imo command's own settings, not the config's)
            text = open(path, encoding="utf-8").read()
            for raise_ in re.finditer(r"raise \w+\((.*?)\)( from None)?\n", text, re.S):
                for hit in config_flags.finditer(raise_.group(1)):
                    if "`jaxclip-fs " not in raise_.group(1)[max(0, hit.start() - 30):hit.start()]:
                        found.append(f"{relative}: {hit.group(0)}")
    assert not found, found


def test_run_config_accepts_a_reproduction_whose_unset_fields_come_from_flags(tmp_path):
    from benchmarks.reproduce import __main__ as runner

    file = os.path.join(REPO, "benchmarks", "reproduce", "configs", "rn50_16shot.json")
    argv = ["run", "--config", file, "--weights", "openai", "--data-root", str(tmp_path),
            "--out", "o"]
    config = config_of_file(file, cli.build_parser().parse_args(argv), flags.given_flags(argv))
    reproduced = runner.load_config("rn50_16shot")
    expected = runner.experiment_config(reproduced, reproduced["methods"], type(
        "Args", (), dict(weights="openai", data_root=str(tmp_path), source="coop",
                         devices=None)))
    assert config == expected  # the benchmark runner's experiment, published methods included
    argv = ["run", "--config", file, "--shots", "4", "--out", "o"]
    with pytest.raises(ConfigError, match="--shots cannot be combined with --config: .* sets "
                                          "grid.shots"):
        config_of_file(file, cli.build_parser().parse_args(argv), flags.given_flags(argv))


def test_a_reproduction_runs_with_run_config(tmp_path):
    raw = {"name": "tiny", "description": "d", "compare_shots": [1], "bands": {},
           "add_published_methods": True,
           "experiment": {"methods": ["tip_adapter"],
                          "data": {"features": _features(tmp_path, ("dtd",))},
                          "grid": {"shots": [1], "seeds": [1]}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(raw))
    out = str(tmp_path / "run")
    assert cli.main(["run", "--config", str(path), "--out", out, "--quiet", "--no-report"]) == 0
    assert len(read_records(out)) == 1


def test_fair_twins_are_derived_from_their_paper_config():
    from benchmarks.reproduce import __main__ as runner

    configs = os.path.join(REPO, "benchmarks", "reproduce", "configs")
    assert not [f for f in os.listdir(configs) if f.endswith("_fair.json")]  # no copies
    for name in ("rn50_16shot", "rn50_curves", "imagenet_ood"):
        paper, twin = runner.read_config(name), runner.read_config(name + "_fair")
        assert twin == reproduction.fair_twin(paper) and twin["name"] == name + "_fair"
        assert twin["experiment"]["protocol"]["names"] == ["fair"]
        paper["experiment"]["protocol"]["names"] = ["fair"]
        assert {k: v for k, v in twin.items() if k not in ("name", "description")} == \
            {k: v for k, v in paper.items() if k not in ("name", "description")}
