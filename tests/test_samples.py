import io
import tarfile

import numpy as np
import pytest

from atlas_gan.samples import NpyEncoder, encode_sample, end_of_archive, tar_member


@pytest.mark.parametrize("name", ["a.json", "LC08_L1TP_224077_20200518_20200518_01_RT_r000064_c001920.tile.npy"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 24_704])
def test_tar_member_header_is_what_tarfile_writes(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    member = tar_member(name, b"x" * size)
    assert member[:512] == info.tobuf(format=tarfile.USTAR_FORMAT)
    assert len(member) % 512 == 0


def test_long_names_fall_back_to_tarfile_and_archive_reads_back():
    long_name = "scene_" + "x" * 120 + ".json"
    payload = encode_sample("k1", {"tile.npy": b"abc", "json": b"{}"}) + tar_member(long_name, b"[]")
    archive = payload + end_of_archive(len(payload))
    assert len(archive) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert [(m.name, m.size) for m in tar.getmembers()] == [("k1.tile.npy", 3), ("k1.json", 2), (long_name, 2)]


def test_npy_encoder_round_trips_and_checks_shape():
    encoder = NpyEncoder(np.dtype(np.float16), (3, 4, 4))
    array = np.arange(48, dtype=np.float16).reshape(3, 4, 4)
    assert np.array_equal(np.load(io.BytesIO(encoder.encode(array))), array)
    with pytest.raises(ValueError, match="expected float16 \\(3, 4, 4\\)"):
        encoder.encode(array[:2])
