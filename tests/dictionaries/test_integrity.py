"""A dictionary folder is checked when it is opened: the weights' SHA-256 that saex records in cfg.json (safetensors
has no checksum), floating-point and finite weights, and a cfg.json that agrees with them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from saex.dictionaries import SAE, load_dictionary
from saex.dictionaries import sae as sae_module
from saex.errors import SaexError
from tests.dictionaries._formats import weights

D, F = 6, 10


def _saved(tmp_path, name="d") -> tuple[SAE, object]:
    w = weights(D, F, 3)
    d = SAE(w["W_enc"], w["W_dec"], w["b_enc"], w["b_dec"], metadata={"hook_name": "blocks.1.hook_resid_post"})
    return d, d.save(tmp_path / name)


def _strip_checksum(folder) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["metadata"]["weights_sha256"]
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_a_bit_flip_in_the_weights_is_one_error_naming_the_file(tmp_path):
    d, folder = _saved(tmp_path)
    back = load_dictionary(folder)
    torch.testing.assert_close(back.W_enc_DF, d.W_enc_DF, rtol=0, atol=0)
    path = folder / "sae_weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # one bit of one weight: the file still parses, to different numbers
    path.write_bytes(bytes(data))
    with pytest.raises(SaexError, match=rf"{path} is corrupted or was changed after it was written: its sha256"):
        load_dictionary(folder)


def test_a_folder_without_a_checksum_loads_with_one_note(tmp_path, capsys):
    _, folder = _saved(tmp_path)
    _strip_checksum(folder)
    sae_module._NOTED.clear()
    load_dictionary(folder)
    load_dictionary(folder)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"note: {folder / 'sae_weights.safetensors'} records no weights checksum (another library's folder): not verified"
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda w: w | {"W_dec": w["W_dec"].clone().index_fill_(0, torch.tensor([2]), float("nan"))}, "W_dec holds NaN or Inf"),
        (lambda w: w | {"b_enc": torch.full((F,), float("inf"))}, "b_enc holds NaN or Inf"),
        (lambda w: w | {"W_enc": w["W_enc"].to(torch.int32)}, "W_enc has dtype torch.int32: a dictionary's weights are floating-point"),
        (lambda w: w | {"W_enc": w["W_enc"].reshape(-1)}, "W_enc and W_dec must be matrices"),
    ],
)  # fmt: skip
def test_weights_that_cannot_be_a_dictionary_are_refused(tmp_path, edit, message):
    _, folder = _saved(tmp_path)
    path = folder / "sae_weights.safetensors"
    save_file(edit(load_file(str(path))), str(path))
    _strip_checksum(folder)  # as another library's folder: the checks below the checksum see it
    with pytest.raises(SaexError, match=rf"dictionary {folder}: {message}"):
        load_dictionary(folder)


def test_a_cfg_whose_width_disagrees_with_its_weights_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": F + 4}))
    with pytest.raises(SaexError, match=rf"cfg.json says d_sae = {F + 4} but W_enc has shape \({D}, {F}\)"):
        load_dictionary(folder)
