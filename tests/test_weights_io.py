"""Reading weight files: validation before use, zero-copy mapping, and refusing unsafe pickles."""
import json
import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from modules.weights_io import SafetensorsFile, WeightFileError, load_pickle_weights, materialize, open_weights


@pytest.fixture()
def st_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5, dtype=torch.float16)},
              str(path), metadata={"note": "x"})
    return path


def test_safetensors_values_shapes_and_metadata(st_file):
    f = SafetensorsFile(st_file)
    assert set(f) == {"a", "b"} and f.metadata == {"note": "x"}
    assert f["a"].shape == torch.Size([3, 4]) and f["b"].dtype == torch.float16
    assert torch.equal(f.tensor("a"), torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert torch.equal(materialize(f["b"], torch.float32), torch.ones(5))


def test_same_dtype_tensor_is_a_view_of_the_mapping_not_a_copy(st_file):
    f = SafetensorsFile(st_file)
    t1, t2 = f.tensor("a"), f.tensor("a")
    assert t1.data_ptr() == t2.data_ptr()  # both views of one mapped page


def test_truncated_file_names_expected_and_found_bytes(st_file):
    data = st_file.read_bytes()
    st_file.write_bytes(data[:-7])
    with pytest.raises(WeightFileError) as err:
        SafetensorsFile(st_file)
    msg = str(err.value)
    assert "w.safetensors" in msg and "corrupt or incomplete" in msg
    assert f"expected {len(data)} bytes, found {len(data) - 7}" in msg


def test_bad_json_header(tmp_path):
    path = tmp_path / "bad.safetensors"
    body = b"{not json"
    path.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(WeightFileError, match=r"bad\.safetensors: corrupt safetensors header \(bad JSON"):
        open_weights(path)


def test_header_length_beyond_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(WeightFileError, match="corrupt or incomplete"):
        open_weights(path)


def test_tensor_offsets_inconsistent_with_shape(tmp_path):
    path = tmp_path / "liar.safetensors"
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(WeightFileError, match="'t' has 8 bytes for shape"):
        open_weights(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/palette-pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Exploit()}, path)
    if os.path.exists("/tmp/palette-pwned"):
        os.remove("/tmp/palette-pwned")
    with pytest.raises(WeightFileError, match=r"evil\.ckpt: refused"):
        load_pickle_weights(path)
    assert not os.path.exists("/tmp/palette-pwned")


def test_raw_pickle_protocol_file_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    with open(path, "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(WeightFileError, match=r"old\.pt"):
        load_pickle_weights(path)
    assert not os.path.exists("/tmp/palette-pwned")


def test_random_bin_is_a_clear_error(tmp_path):
    path = tmp_path / "noise.bin"
    for seed in range(200):  # garbage trips the unpickler in many different ways; all must be clear
        path.write_bytes(torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(WeightFileError, match=r"noise\.bin: not a (readable )?PyTorch weights file"):
            open_weights(path)


def test_nested_state_dict_wrapper(tmp_path):
    path = tmp_path / "wrapped.ckpt"
    torch.save({"global_step": 5, "state_dict": {"w": torch.ones(2)}}, path)
    sd = open_weights(path)
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(2))


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(WeightFileError, match="unsupported file type '.onnx'"):
        open_weights(path)
