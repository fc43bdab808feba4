"""Config overrides spelled one way in every tool: Detectron2's trailing
``KEY VALUE`` pairs, or the same after ``--opts`` (issue 24, item 5); --help
keeps its examples' layout (item 8); the README's tool commands parse as written."""
import os
import re
import shlex

import pytest
from conftest import REPO, config_path, load_tool

from sact_det.engine.train_net import command_line
from sact_det.utils.cli import ToolParser, add_config_arguments, split_overrides

TINY = config_path("synthetic/sact_tiny.yaml")
TYPO = ["MODEL.SACT.TAUU", "0.1"]
TYPO_ERROR = "error: unknown config key MODEL.SACT.TAUU in the command-line overrides; did you mean MODEL.SACT.TAU"


def status(main, argv, capsys):
    """(exit status, stderr) of a tool's main, whether it returns or exits."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def cat2000(tmp_path_factory):
    root = tmp_path_factory.mktemp("cat2000")
    for folder in ("Stimuli/Art", "FIXATIONMAPS/Art"):
        (root / folder).mkdir(parents=True)
        (root / folder / "001.jpg").write_bytes(b"")
    return str(root)


def tool_commands(tmp, cat2000):
    """Each tool that takes a config: its main and the arguments before the overrides."""
    out = str(tmp / "out")
    return {
        "train_net": (command_line, ["--config-file", TINY, "--eval-only"]),
        "demo": (load_tool("demo").main, ["--config-file", TINY, "--input", "a.jpg", "b.jpg", "--output", out]),
        "train_demo": (load_tool("train_demo").main, ["--output-dir", out]),
        "visualize_ponder": (load_tool("visualize_ponder").main, ["--config-file", TINY, "--input", "a.jpg",
                                                                  "--output", out]),
        "analyze_model": (load_tool("analyze_model").main, ["--config-file", TINY, "--tasks", "parameter", "flop"]),
        "visualize_data": (load_tool("visualize_data").main, ["--config-file", TINY, "--source", "annotation",
                                                              "--output", out]),
        "export_model": (load_tool("deploy/export_model").main, ["--config-file", TINY, "--output", out]),
        "halting_budget": (load_tool("halting_budget").main, ["--config-file", TINY, "--target-flops", "50"]),
        "eval_saliency": (load_tool("eval_saliency").main, ["--config-file", TINY, "--cat2000", cat2000,
                                                            "--output", out]),
        "benchmark": (load_tool("benchmark").main, ["--config-file", TINY, "--points", "50", "25"]),
        "tradeoff": (load_tool("tradeoff").main, ["--output", out, "--offsets", "1", "2"]),
    }


TOOLS = ["train_net", "demo", "train_demo", "visualize_ponder", "analyze_model", "visualize_data", "export_model",
         "halting_budget", "eval_saliency", "benchmark", "tradeoff"]


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_takes_trailing_overrides_and_opts(name, tmp_path, cat2000, capsys):
    main, argv = tool_commands(tmp_path, cat2000)[name]
    # Each spelling reaches the config: a misspelt key is named, before any work.
    for spelling in (argv + TYPO, argv + ["--opts"] + TYPO, argv + ["MODEL.DEVICE", "cpu", "--opts"] + TYPO):
        code, err = status(main, spelling, capsys)
        assert code == 2 and TYPO_ERROR in err, (spelling, err)
    code, err = status(main, argv + TYPO + ["--verbose"], capsys)
    assert code == 2 and "argument --verbose: options go before the config overrides (KEY VALUE pairs at the end" in err
    code, err = status(main, argv + ["MODEL.DEVICE"], capsys)
    assert code == 2 and "config overrides: expected KEY VALUE pairs" in err and "odd number" in err
    assert not os.path.exists(tmp_path / "out")  # nothing ran


def test_overrides_start_at_the_first_config_key_or_after_opts():
    assert split_overrides(["--input", "a.jpg", "IMG_0001.JPG", "MODEL.WEIGHTS", "w.pth", "SEED", "3"]) == (
        ["--input", "a.jpg", "IMG_0001.JPG"], ["MODEL.WEIGHTS", "w.pth", "SEED", "3"])
    assert split_overrides(["--x", "OUTPUT_DIR", "out"]) == (["--x"], ["OUTPUT_DIR", "out"])
    assert split_overrides(["--opts", "A.B", "1"]) == ([], ["A.B", "1"])  # anything after --opts
    assert split_overrides(["--x", "MODEL", "TEST.JPG.x", "mODEL.WEIGHTS"]) == (
        ["--x", "MODEL", "TEST.JPG.x", "mODEL.WEIGHTS"], [])  # a section alone, lower case: not keys
    assert split_overrides(["--input", "a.jpg"]) == (["--input", "a.jpg"], [])


def test_options_with_several_values_may_come_right_before_the_overrides():
    parser = ToolParser()
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"])
    add_config_arguments(parser)
    args = parser.parse_args(["--config-file", TINY, "--tasks", "flop", "MODEL.WEIGHTS", "w.pth"])
    assert args.tasks == ["flop"] and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    assert parser.parse_args(["--config-file", TINY]).opts == []


def tool_names():
    names = [os.path.splitext(f)[0] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py")]
    return sorted(names) + ["deploy/export_model"]


@pytest.mark.parametrize("name", tool_names())
def test_help_keeps_the_examples_as_written(name, capsys):
    """The docstring's examples, continuation backslashes included, appear in --help
    as in the source (a non-raw docstring joins them into one line of spaces)."""
    with pytest.raises(SystemExit) as exit_:
        (command_line if name == "train_net" else load_tool(name).main)(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert not re.search(r"\S {4,}--[a-z]", text), text
    if name == "train_net":
        return  # its help is Detectron2's, with Detectron2's examples
    source = open(os.path.join(REPO, "tools", name + ".py")).read()
    for line in source.split('"""')[1].splitlines():
        if line.strip().startswith("python tools/"):
            assert line.rstrip() in text.splitlines(), line


class Parsed(Exception):
    pass


def readme_commands():
    """The README's ``python tools/...`` commands, continuation lines joined."""
    readme = open(os.path.join(REPO, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] and words[0] == "python" and words[1].startswith("tools/"):
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:70])
def test_readme_tool_commands_parse_as_written(command, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    parse = ToolParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse(self, args, namespace)[0])

    monkeypatch.setattr(ToolParser, "parse_known_args", parse_then_stop)
    script, argv = command[0], command[1:]
    main = command_line if script == "tools/train_net.py" else load_tool(script[len("tools/"):-3]).main
    try:
        main(argv)
    except Parsed as parsed:
        opts = getattr(parsed.args[0], "opts", None) or []
        assert len(opts) % 2 == 0 and all(re.fullmatch(r"[A-Z][A-Z0-9_.]*", key) for key in opts[::2]), opts
        return
    except SystemExit:
        err = capsys.readouterr().err
        # An input an earlier README step makes (clip.mp4, r50.pth) is checked to exist: that is all.
        assert "expected an existing file" in err, err
        return
    pytest.fail("the tool did not parse its arguments")
