import io
import tarfile

import numpy as np
import pytest

from atlas_gan.samples import (
    NpyDecoder,
    NpyEncoder,
    TarFormatError,
    encode_sample,
    end_of_archive,
    read_members,
    tar_member,
)


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


def test_read_members_matches_tarfile_on_real_shards(train_data):
    """The trainer's own tar reader against tarfile, member by member, on ingested Landsat shards."""
    shards = sorted(train_data.glob("*.tar"))
    assert shards
    decoder = NpyDecoder()
    for shard in shards:
        with tarfile.open(shard) as tar:
            expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        with open(shard, "rb") as stream:
            assert list(read_members(stream)) == expected
        tile_payload = next(payload for name, payload in expected if name.endswith(".tile.npy"))
        np.testing.assert_array_equal(decoder.decode(tile_payload), np.load(io.BytesIO(tile_payload)))


def test_read_members_reads_pax_long_names_and_refuses_damage():
    long_name = "scene_" + "x" * 120 + ".json"
    payload = encode_sample("k1", {"tile.npy": b"abc"}) + tar_member(long_name, b"[]")
    archive = payload + end_of_archive(len(payload))
    assert list(read_members(io.BytesIO(archive))) == [("k1.tile.npy", b"abc"), (long_name, b"[]")]
    damaged = bytearray(archive)
    damaged[10] ^= 0xFF  # inside the first member's name
    with pytest.raises(TarFormatError, match="checksum"):
        list(read_members(io.BytesIO(bytes(damaged))))
    with pytest.raises(TarFormatError, match="truncated"):
        list(read_members(io.BytesIO(archive[:700])))


def test_npy_decoder_handles_other_headers():
    decoder = NpyDecoder()
    for array in (np.arange(12, dtype=np.int16).reshape(3, 4), np.asfortranarray(np.ones((2, 3))), np.zeros(0)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        np.testing.assert_array_equal(decoder.decode(buffer.getvalue()), array)
