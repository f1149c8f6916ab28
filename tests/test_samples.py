import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from atlas_gan.geo.footprints import tile_transform
from atlas_gan.geo.tiling import tile_metadata_json
from atlas_gan.samples import (
    NpyDecoder,
    NpyEncoder,
    TarFormatError,
    encode_sample,
    end_of_archive,
    member_size,
    read_members,
    tar_member,
)
from atlas_gan.shards import ShardPlan
from atlas_gan.storage import LocalStorage


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


@pytest.mark.parametrize("name", ["k.json", "LC08_L1TP_224077_01_RT_r000064_c001920.tile.npy", "x" * 150, "a/b"])
@pytest.mark.parametrize("size", [0, 1, 512, 24_704])
def test_member_size_is_the_length_of_the_member(name, size):
    assert member_size(name, size) == len(tar_member(name, b"x" * size))


def test_npy_encoder_round_trips_and_checks_shape():
    encoder = NpyEncoder(np.dtype(np.float16), (3, 4, 4))
    array = np.arange(48, dtype=np.float16).reshape(3, 4, 4)
    assert np.array_equal(np.load(io.BytesIO(encoder.encode(array))), array)
    assert encoder.encoded_size == len(encoder.encode(array))
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


def test_tile_metadata_json_is_what_json_dumps_writes():
    """Ingest formats each tile's JSON directly; it must stay byte for byte the compact `json.dumps` form."""
    prefix = json.dumps({"scene_id": "LC08_x", "bands": ["B4", "B3"], "epsg": None}, separators=(",", ":"))[:-1]
    for transform, row, col, fraction in [
        ([30.0, 0.0, 399885.0, 0.0, -30.0, -2600385.0], 0, 0, 0.0),
        ([10.0, 0.5, -12.25, -0.25, -10.0, 1e7], 6400, 128, 0.1234567891),
        ([1, 0, 5, 0, -1, 7], 64, 32, 1 / 3),  # integer transforms are written as integers, as json.dumps does
    ]:
        a, b, c, d, e, f = tile_transform(transform, row, col)
        xs = [c + a * i + b * j for i, j in ((0, 0), (64, 0), (0, 64), (64, 64))]
        ys = [f + d * i + e * j for i, j in ((0, 0), (64, 0), (0, 64), (64, 64))]
        own = {
            "transform": [a, b, c, d, e, f],
            "bounds": [min(xs), min(ys), max(xs), max(ys)],
            "window": {"row": row, "col": col, "height": 64, "width": 64},
            "nodata_fraction": round(fraction, 6),
        }
        expected = prefix + "," + json.dumps(own, separators=(",", ":"))[1:]
        assert tile_metadata_json(prefix, transform, row, col, 64, fraction) == expected.encode()


def _planned_shards(tmp_path, groups, order):
    """Lay `groups` (lists of samples) out with a ShardPlan, write each group's samples at its placements in
    `order` (as workers finish), then mark the groups written in order; returns the plan and what each
    `written` call published."""
    plan = ShardPlan(LocalStorage(), str(tmp_path), "t", 3, max_samples=6, max_bytes=12000)
    placements = plan.place([(f"scene{g}", [len(s) for s in samples]) for g, samples in enumerate(groups)])
    for g in order:
        samples = iter(groups[g])
        for place in placements[g]:
            with open(place.path, "r+b") as shard:
                shard.seek(place.offset)
                for _ in range(place.count):
                    shard.write(next(samples))
    published = []
    for g in range(len(groups)):
        plan.written(g)
        published.append(len(plan.records))
    return plan, published


def test_shard_plan_cuts_shards_greedily_and_publishes_each_once_whole(tmp_path):
    samples = [encode_sample(f"k{i}", {"tile.npy": bytes([i]) * (100 + 300 * (i % 7))}) for i in range(40)]
    groups = [samples[:15], samples[15:16], samples[16:]]
    plan, published = _planned_shards(tmp_path / "out", groups, order=[2, 0, 1])
    records = plan.records
    assert [r.url for r in records] == [f"t-{i:06d}.tar" for i in range(3, 3 + len(records))]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [r.url for r in records]  # no staging file left
    names, start = [], 0
    for index, record in enumerate(records):
        data = (tmp_path / "out" / record.url).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record.sha256 and len(data) % tarfile.RECORDSIZE == 0
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names += [m.name for m in tar.getmembers()]
        mine = samples[start : start + record.samples]
        assert record.bytes == sum(len(s) for s in mine) and record.bytes + 1024 <= 12000
        assert record.samples <= 6
        if index + 1 < len(records):  # greedy: the next shard's first sample would have broken a bound
            assert record.samples == 6 or record.bytes + len(samples[start + record.samples]) + 1024 > 12000
        start += record.samples
    assert names == [f"k{i}.tile.npy" for i in range(40)]
    assert {r.samples for r in records[:-1]} > {6}  # both bounds cut shards: the count and the bytes
    group_of = [0] * 15 + [1] + [2] * 24
    starts = np.cumsum([0] + [r.samples for r in records])
    for record, first in zip(records, starts, strict=False):  # each shard names its scenes, in order, once
        assert record.scenes == [f"scene{g}" for g in dict.fromkeys(group_of[first : first + record.samples])]
    # a shard is published once every group that writes into it is written, not before
    ends = starts[1:]
    assert published == [int((ends <= 15).sum()), int((ends <= 16).sum()), len(records)]


def test_shard_plan_abort_leaves_nothing_unpublished(tmp_path):
    plan = ShardPlan(LocalStorage(), str(tmp_path), "t", 0, max_samples=2, max_bytes=2**20)
    plan.place([("s", [2048] * 5)])
    assert len(list(tmp_path.glob(".t.*.partial"))) == 3  # staged at full size, not visible as shards
    plan.abort()
    assert list(tmp_path.iterdir()) == []
