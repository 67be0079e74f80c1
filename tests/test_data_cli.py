"""`jaxclip-fs datasets`: lists, describes and checks datasets; one-line errors."""

import numpy as np
from PIL import Image

from jaxclip_fs.cli import main
from jaxclip_fs.data import get_dataset


def test_lists_names_and_setup_help(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "oxford_pets" in out and "imagenet_r" in out and "folder:PATH" in out
    assert main(["datasets", "--setup-help"]) == 0
    assert "split_zhou_DescribableTextures.json" in capsys.readouterr().out


def test_describes_a_folder_dataset(tmp_path, capsys):
    for name in ("ant", "bee"):
        for i in range(5):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(np.full((3, 3, 3), i, np.uint8)).save(tmp_path / name / f"{i}.png")
    assert main(["datasets", f"folder:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    ds = get_dataset(f"folder:{tmp_path}")
    for split in ("train", "val", "test"):
        assert f"  {split}: {len(ds.split(split))} images (" in out
    assert f"identity: {ds.identity}" in out


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("JAXCLIP_FS_DATA", raising=False)
    assert main(["datasets", "oxford_pets"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset 'oxford_pets' needs a data root") and err.count("\n") == 1
    assert main(["datasets", "oxford_pets", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path}/oxford_pets/split_zhou_OxfordPets.json: not found -- "
                   f"'oxford_pets' expects oxford_pets/images/ and oxford_pets/"
                   f"split_zhou_OxfordPets.json (see: jaxclip-fs datasets --setup-help)\n")
    assert main(["datasets", "digits", "--source", "tfds"]) == 2
    assert "dataset 'digits' takes no option 'source'" in capsys.readouterr().err
