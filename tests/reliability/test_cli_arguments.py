"""Bad command-line arguments: refused before the first image with one line naming the option, never a traceback."""

from __future__ import annotations

import pytest
from PIL import Image

from moai_edge.runtime.cli import main
from moai_edge.runtime.samples import sample_image


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    Image.fromarray(sample_image(size=96)).save(root / "a.png")
    return root


CAPTION_CASES = [
    (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "-1"], "batch_size"),
    (["--batch-size", "100000"], "batch_size"),
    (["--threads", "100000"], "threads"),
    (["--threads", "-2"], "threads"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--max-new-tokens", "-5"], "max_new_tokens"),
    (["--max-new-tokens", "1000000000"], "max_new_tokens"),
]


@pytest.mark.parametrize("args, option", CAPTION_CASES)
def test_caption_arguments_are_bounded(tiny_packages, folder, tmp_path, capsys, args, option):
    out = tmp_path / "o.jsonl"
    code = main(["caption", str(folder), "--engine", str(tiny_packages["moai"]), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and option in err and "expected" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or out.stat().st_size == 0  # nothing written: refused before the first image


@pytest.mark.parametrize("args", [["--max-new-tokens", "1e9"], ["--batch-size", "two"], ["--decoding", "magic"]])
def test_unparseable_values_are_usage_errors(tiny_packages, folder, tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", str(folder), "--engine", str(tiny_packages["moai"]), "--out", str(tmp_path / "o"), *args]
             if args[0] != "--decoding" else ["ask", "--engine", str(tiny_packages["moai"]), "x.png", "q", *args])
    assert exit_.value.code == 2 and "invalid" in capsys.readouterr().err


@pytest.mark.parametrize("image, says", [("{folder}", "is a directory"), ("{folder}/missing.png", "no such file"),
                                         ("{folder}/loop.png", "symlink loop")])
def test_ask_names_what_is_wrong_with_the_image(tiny_packages, folder, capsys, image, says):
    (folder / "loop.png").symlink_to(folder / "loop.png")
    code = main(["ask", "--engine", str(tiny_packages["collavo"]), image.format(folder=folder), "What?"])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err


def test_ask_bounds_its_numbers(tiny_packages, folder, capsys):
    for args, option in ([["--max-new-tokens", "0"], "max_new_tokens"], [["--threads", "9999"], "threads"],
                         [["--max-new-tokens", "100000"], "max_new_tokens"]):
        code = main(["ask", "--engine", str(tiny_packages["collavo"]), str(folder / "a.png"), "What?", *args])
        err = capsys.readouterr().err
        assert code == 2 and option in err and "Traceback" not in err, err


def test_ask_refuses_a_negative_seed(tiny_packages, folder, capsys):
    code = main(["ask", "--engine", str(tiny_packages["collavo"]), str(folder / "a.png"), "What?",
                 "--decoding", "sample", "--seed", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "seed: expected an integer >= 0" in err and "found -1" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_input_and_output_problems_are_one_line(tiny_packages, folder, tmp_path, capsys):
    cases = [
        (["caption", str(tmp_path / "nowhere"), "--engine", str(tiny_packages["moai"]), "--out", str(tmp_path / "o")],
         "neither a folder nor a text file"),
        (["caption", str(folder), "--engine", str(tmp_path), "--out", str(tmp_path / "o")], "manifest.json"),
        (["caption", str(folder), "--engine", str(tiny_packages["moai"]), "--out", str(folder / "a.png" / "o")], ""),
    ]
    for argv, says in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code in (1, 2) and says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_export_refuses_a_moai_clone_whose_labels_are_code(tmp_path, capsys):
    pytest.importorskip("torch", reason="export needs moai-edge[export]")
    marker = tmp_path / "ran"
    (tmp_path / "moai" / "utils").mkdir(parents=True)
    (tmp_path / "moai" / "utils" / "constants.py").write_text(
        f"ADE20K_847 = [open({str(marker)!r}, 'w').name]\nIMAGENET_CLASSES = ['tench']\n")
    out = tmp_path / "pkg"
    code = main(["export", "--tiny", "moai", "--moai-repo", str(tmp_path / "moai"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "constants.py, line 1: ADE20K_847: expected a literal list of strings" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists() and not out.exists()
