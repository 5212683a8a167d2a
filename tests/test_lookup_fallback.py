"""The lookup fallback chain (exact -> nearest -> same-arch -> default) on a database the test writes."""
import datetime as dt
import json
import math
import time

import pytest

from sparse_autotune.store.lookup import lookup, search_path
from sparse_autotune.store.db import Record, TuningDB

H100 = "NVIDIA H100 80GB HBM3"
H200 = "NVIDIA H200"
A100 = "NVIDIA A100-SXM4-80GB"


TAGS = ["h100-exact", "h100-n1024", "h100-big", "h200-only", "a100", "h100-n512", "h100-fp16"]
BASE = {"rows_per_block": 8, "lanes_per_row": 8, "vec": 1, "cols_per_thread": 1, "stage": "none",
        "raster": "rows_first", "index_bits": 32, "split": 0, "acc": "f32"}


def variant(tag: str) -> dict:
    """A valid csr_rowsplit config that names the record (lookup returns configs that run the problem)."""
    i = TAGS.index(tag)
    return {**BASE, "unroll": [1, 2, 4, 8][i % 4], "row_order": ["natural", "sorted"][i // 4]}


def tag_of(cfg: dict) -> str:
    return next(t for t in TAGS if variant(t) == {k: cfg[k] for k in variant(t)})


def rec(gpu, cc, m, k, n, d, t, cfg, dtype="fp32", pattern="uniform"):
    cfg = {**variant(cfg["tag"]), **cfg} if "tag" in cfg else cfg  # the tag rides along (not a parameter)
    return Record(gpu_name=gpu, gpu_cc=cc, m=m, k=k, n=n, density=d, dtype=dtype, pattern=pattern,
                  family="csr_rowsplit", config_json=json.dumps(cfg), time_us=t, gflops=1.0, max_rel_err=1e-7,
                  trials=1, matrix_hash="h", package_version="0", cuda_version="13.0", driver_version="580",
                  cupy_version="14", created_at=dt.datetime(2026, 1, 1))


@pytest.fixture()
def db(tmp_path):
    lookup.cache_clear()
    p = tmp_path / "t.sqlite"
    tdb = TuningDB(p)
    tdb.store(rec(H100, "9.0", 512, 2048, 256, 0.1, 10.0, {"tag": "h100-exact"}))
    tdb.store(rec(H100, "9.0", 512, 2048, 1024, 0.1, 30.0, {"tag": "h100-n1024"}))
    tdb.store(rec(H100, "9.0", 4096, 4096, 16, 0.05, 5.0, {"tag": "h100-big"}))
    tdb.store(rec(H200, "9.0", 768, 3072, 512, 0.05, 20.0, {"tag": "h200-only"}))
    tdb.store(rec(A100, "8.0", 100, 100, 100, 0.3, 1.0, {"tag": "a100"}))
    tdb.dispose()
    return p


def test_exact_hit_says_exact(db):
    r = lookup(512, 2048, 256, 0.1, "fp32", gpu=H100, cc="9.0", db=db)
    assert r.source == "exact" and tag_of(r.config) == "h100-exact" and r.distance == 0.0 and r.time_us == 10.0


def test_nearest_on_same_gpu_with_distance(db):
    r = lookup(512, 2048, 512, 0.1, "fp32", gpu=H100, cc="9.0", db=db)
    # N=512 is one log2 step from both 256 and 1024: the tie goes to the faster record
    assert r.source == "nearest" and math.isclose(r.distance, 1.0)
    assert tag_of(r.config) in ("h100-exact", "h100-n1024")
    r2 = lookup(4096, 4096, 32, 0.05, "fp32", gpu=H100, cc="9.0", db=db)
    assert r2.source == "nearest" and tag_of(r2.config) == "h100-big" and math.isclose(r2.distance, 1.0)


def test_same_arch_when_this_gpu_has_nothing(db):
    r = lookup(768, 3072, 512, 0.05, "fp32", gpu="NVIDIA GH200", cc="9.0", db=db)
    assert r.source == "same-arch" and r.gpu in (H100, H200)
    assert tag_of(r.config) == "h200-only" and r.distance == 0.0  # the exact key exists on the H200


def test_other_arch_is_never_used_and_default_is_last(db):
    r = lookup(100, 100, 100, 0.3, "fp32", gpu="NVIDIA L4", cc="8.9", db=db)
    assert r.source == "default" and r.time_us is None and r.family == "csr_rowsplit"
    assert lookup(100, 100, 100, 0.3, "fp16", gpu=H100, cc="9.0", db=db).source == "default"


def test_exact_only_returns_none_on_a_miss(db):
    assert lookup(512, 2048, 512, 0.1, "fp32", gpu=H100, db=db, fallback=False) is None


def test_cache_sees_a_changed_file(db):
    assert lookup(512, 2048, 512, 0.1, "fp32", gpu=H100, cc="9.0", db=db).source == "nearest"
    time.sleep(0.01)
    tdb = TuningDB(db)
    tdb.store(rec(H100, "9.0", 512, 2048, 512, 0.1, 15.0, {"tag": "h100-n512"}))
    tdb.dispose()
    r = lookup(512, 2048, 512, 0.1, "fp32", gpu=H100, cc="9.0", db=db)
    assert r.source == "exact" and tag_of(r.config) == "h100-n512"


def test_search_path_puts_the_user_db_first(db):
    path = search_path(db)
    assert path[0] == str(db) and all(p.endswith(".sqlite") for p in path)


@pytest.mark.shipped_db
def test_shipped_database_is_searched_after_the_user_db(tmp_path):
    """The H100 database shipped in db/ answers an exact key when the user's database has nothing."""
    from sparse_autotune.store.lookup import shipped_databases
    lookup.cache_clear()
    shipped = shipped_databases()
    assert any(p.endswith("h100-80gb-hbm3.sqlite") for p in shipped)
    r = lookup(512, 2048, 256, 0.1, "fp32", gpu=H100, cc="9.0", db=tmp_path / "none.sqlite")
    assert r.source == "exact" and r.db.endswith("h100-80gb-hbm3.sqlite") and r.time_us > 0
    assert not (tmp_path / "none.sqlite").exists()


def test_seed_configs_nearest_first_this_gpu_and_dtype_only(db):
    from sparse_autotune.store.lookup import seed_configs
    tdb = TuningDB(db)
    try:
        tdb.store(rec(H100, "9.0", 512, 2048, 256, 0.1, 9.0, {"tag": "h100-fp16"}, dtype="fp16"))
        tdb.store(rec(H100, "9.0", 768, 3072, 512, 0.05, 12.0, {"tag": "h100-exact"}))  # a config seen twice
        seeds = seed_configs(tdb, 512, 2048, 512, 0.1, "fp32", H100, per_family=10)
        # N=512 is one log2 step from N=256 and N=1024 (the faster goes first), then 768x3072 d=0.05, then 4096^2
        assert [c["tag"] for _, c in seeds] == ["h100-exact", "h100-n1024", "h100-big"]
        assert all(f == "csr_rowsplit" for f, _ in seeds)
        assert [c["tag"] for _, c in seed_configs(tdb, 512, 2048, 512, 0.1, "fp32", H100)] == ["h100-exact",
                                                                                                 "h100-n1024"]
        assert [c["tag"] for _, c in seed_configs(tdb, 512, 2048, 512, 0.1, "fp16", H100)] == ["h100-fp16"]
        assert seed_configs(tdb, 512, 2048, 512, 0.1, "fp32", "NVIDIA B200") == []
        assert seed_configs(tdb, 512, 2048, 512, 0.1, "fp32", H100, families={"csr_btile"}) == []
        assert len(seed_configs(tdb, 512, 2048, 512, 0.1, "fp32", H100, per_family=10, limit=2)) == 2
    finally:
        tdb.dispose()


def test_lookup_adapts_the_config_to_n_and_keeps_the_stored_one(db):
    """A stored vector width that N does not divide is lowered (lookup and the runtime print the same config)."""
    tdb = TuningDB(db)
    tdb.store(rec(H100, "9.0", 2048, 2048, 128, 0.1, 3.0, {**BASE, "unroll": 2, "row_order": "natural", "vec": 4}))
    tdb.dispose()
    r = lookup(2048, 2048, 98, 0.1, "fp32", gpu=H100, cc="9.0", db=db)
    assert r.source == "bucket" and r.config["vec"] == 2 and r.stored_config["vec"] == 4  # N = 98: bucket 128
    assert lookup(2048, 2048, 128, 0.1, "fp32", gpu=H100, cc="9.0", db=db).stored_config is None  # runs as stored


def test_a_record_that_cannot_run_this_problem_is_passed_over_for_the_next_nearest(db):
    """16-bit indices cannot address K = 70000: the nearest record is skipped, the next one is used, not the default."""
    tdb = TuningDB(db)
    tdb.store(rec(H100, "9.0", 600, 65000, 64, 0.01, 1.0, {**BASE, "unroll": 2, "row_order": "sorted",
                                                          "index_bits": 16}, dtype="fp16"))
    tdb.store(rec(H100, "9.0", 600, 16000, 64, 0.01, 2.0, {**BASE, "unroll": 4, "row_order": "sorted"}, dtype="fp16"))
    tdb.dispose()
    r = lookup(600, 70000, 64, 0.01, "fp16", gpu=H100, cc="9.0", db=db)
    assert r.source == "nearest" and r.config["index_bits"] == 32 and r.key[1] == 16000


def test_the_default_is_the_shipped_records_most_frequent_winner_of_the_cell(tmp_path, monkeypatch):
    """Where no record of this GPU model or its architecture runs the problem, the default comes from the shipped
    records of any GPU: in the problem's (dtype, N range, density range) cell, the family that won most often there,
    with the config of its nearest record that runs the problem; bf16 borrows fp16's cell; an empty cell falls back to
    the first known-good config."""
    import sparse_autotune.store.lookup as lk
    shipped = tmp_path / "shipped.sqlite"
    tdb = TuningDB(shipped)
    # cell N <= 8, d in (0.03, 0.07]: csr_rowsplit won twice, another family once
    tdb.store(rec(H100, "9.0", 4096, 4096, 1, 0.05, 5.0, {**BASE, "unroll": 2, "row_order": "natural"}, dtype="fp16"))
    tdb.store(rec(H100, "9.0", 11008, 4096, 8, 0.05, 9.0, {**BASE, "unroll": 8, "row_order": "natural"}, dtype="fp16"))
    other = tdb.store(rec(H100, "9.0", 1024, 4096, 4, 0.05, 2.0, {**BASE, "unroll": 4, "row_order": "natural"},
                          dtype="fp16"))
    tdb.store(rec(H100, "9.0", 512, 512, 256, 0.1, 3.0, {**BASE, "unroll": 1, "row_order": "sorted"}, dtype="fp32"))
    tdb.dispose()
    from sqlalchemy import create_engine, text
    eng = create_engine(f"sqlite:///{shipped}")
    with eng.begin() as c:  # the third record's family: csr_btile (one win against csr_rowsplit's two)
        c.execute(text("UPDATE sat_records SET family = 'csr_btile' WHERE id = :i"), {"i": other.id})
    eng.dispose()
    monkeypatch.setattr(lk, "shipped_databases", lambda: (str(shipped),))
    lookup.cache_clear()
    empty = tmp_path / "mine.sqlite"
    r = lookup(4096, 4096, 2, 0.05, "fp16", gpu="NVIDIA L4", cc="8.9", db=empty)
    assert r.source == "default" and r.family == "csr_rowsplit" and r.config["unroll"] == 2  # nearest: 4096x4096
    assert r.record_id is not None and r.key[:3] == (4096, 4096, 1)
    b = lookup(11000, 4096, 8, 0.05, "bf16", gpu="NVIDIA L4", cc="8.9", db=empty)  # bf16: fp16's winners
    assert b.source == "default" and b.family == "csr_rowsplit" and b.config["unroll"] == 8
    far = lookup(4096, 4096, 2048, 0.3, "fp16", gpu="NVIDIA L4", cc="8.9", db=empty)  # an empty cell
    assert far.source == "default" and far.record_id is None
    assert not empty.exists()


def test_an_n_is_served_by_its_buckets_record_before_a_nearer_one(db):
    """N = 100 is in the bucket of 128 (65..128): a record tuned at N = 128 serves it, although one at N = 64 is nearer
    in log2 N; lookup says "bucket". Outside any tuned bucket, the nearest record as before."""
    from sparse_autotune.core.problem import n_bucket
    assert [n_bucket(x) for x in (1, 2, 3, 8, 9, 77, 100, 128, 129)] == [1, 2, 4, 8, 16, 128, 128, 128, 256]
    tdb = TuningDB(db)
    tdb.store(rec(H100, "9.0", 2048, 2048, 128, 0.1, 3.0, {**BASE, "unroll": 2, "row_order": "natural"}))
    tdb.store(rec(H100, "9.0", 2048, 2048, 64, 0.1, 2.0, {**BASE, "unroll": 4, "row_order": "natural"}))
    tdb.dispose()
    r = lookup(2048, 2048, 100, 0.1, "fp32", gpu=H100, cc="9.0", db=db)
    assert r.source == "bucket" and r.key[2] == 128 and r.config["unroll"] == 2
    r = lookup(2048, 2048, 90, 0.1, "fp32", gpu=H100, cc="9.0", db=db)  # 90 -> 128 as well
    assert r.source == "bucket" and r.key[2] == 128
    r = lookup(2048, 2048, 40, 0.1, "fp32", gpu=H100, cc="9.0", db=db)  # bucket 64: its record
    assert r.source == "bucket" and r.key[2] == 64
    r = lookup(2048, 2048, 300, 0.1, "fp32", gpu=H100, cc="9.0", db=db)  # bucket 512: none, the nearest
    assert r.source == "nearest" and r.key[2] == 128


def test_a_record_whose_own_baselines_were_faster_is_served_by_that_vendor_path(tmp_path):
    """Records tuned before the vendor paths were candidates carry the verdict in their baseline columns: the kernel
    lost to cuBLAS (fp16) or cuSPARSE (fp32) in the same process, so lookup serves that vendor path and says why."""
    import sparse_autotune as sa
    from sparse_autotune.store.db import TuningDB
    from tests.records import CONFIG, GPU, KEY, make_record
    db = tmp_path / "v.sqlite"
    tdb = TuningDB(db)
    tdb.store(make_record(10.0, CONFIG, dtype="fp16", cusparse_us=30.0, cublas_fp16_us=8.0))  # cuBLAS FP16 won
    tdb.store(make_record(10.0, CONFIG, m=1024, cusparse_us=9.0, cublas_fp32_us=30.0, cublas_tf32_us=4.0))
    tdb.store(make_record(10.0, CONFIG, m=2048, cusparse_us=12.0, cublas_fp32_us=30.0))  # the kernel won
    tdb.dispose()
    sa.lookup.cache_clear()
    m, k, n, d = KEY["m"], KEY["k"], KEY["n"], KEY["density"]
    r = sa.lookup(m, k, n, d, "fp16", gpu=GPU, db=db)
    assert (r.family, r.config, r.source, r.time_us) == ("dense", {"math": "fp16"}, "exact", 8.0)
    assert "cuBLAS FP16 8.00 us beat its csr_rowsplit 10.00 us" in r.note
    r = sa.lookup(1024, k, n, d, "fp32", gpu=GPU, db=db)  # TF32 was fastest, but the user has not opted in
    assert (r.family, r.config) == ("cusparse", {"alg": "auto"}) and "cuSPARSE" in r.note  # picked at the first call
    r = sa.lookup(1024, k, n, d, "fp32", gpu=GPU, db=db, allow_tf32=True)
    assert (r.family, r.config) == ("dense", {"math": "tf32"})
    r = sa.lookup(2048, k, n, d, "fp32", gpu=GPU, db=db)
    assert r.family == "csr_rowsplit" and r.note is None
    r = sa.lookup(m, k, 77, d, "fp16", gpu=GPU, db=db)  # a nearer record's verdict travels with it
    assert r.family == "dense" and r.source in ("bucket", "nearest")
    r = sa.lookup(m, k, n, d, "fp16", gpu=GPU, db=db, adapt=False)  # the database's own view: the stored record
    assert r.family == "csr_rowsplit"


def test_a_narrow_win_is_not_carried_to_another_problem(tmp_path):
    """A kernel that beat the vendor paths by less than TRANSFER_MARGIN serves its own key, but another N (or another
    key, or GPU) gets the vendor path; a wide win travels."""
    import sparse_autotune as sa
    from sparse_autotune.store.db import TuningDB
    from sparse_autotune.store.lookup import TRANSFER_MARGIN
    from tests.records import CONFIG, GPU, KEY, make_record
    db = tmp_path / "m.sqlite"
    tdb = TuningDB(db)
    tdb.store(make_record(10.0, CONFIG, cusparse_us=10.5, cublas_fp32_us=30.0))  # won by 5 %
    tdb.store(make_record(10.0, CONFIG, m=1024, cusparse_us=15.0, cublas_fp32_us=30.0))  # won by 50 %
    tdb.dispose()
    assert 0.05 < TRANSFER_MARGIN < 0.5
    sa.lookup.cache_clear()
    m, k, n, d = KEY["m"], KEY["k"], KEY["n"], KEY["density"]
    assert sa.lookup(m, k, n, d, "fp32", gpu=GPU, db=db).family == "csr_rowsplit"  # its own key: measured there
    other = sa.lookup(m, k, 200, d, "fp32", gpu=GPU, db=db)
    assert other.family == "cusparse" and other.source == "bucket" and "not carried" in other.note
    arch = sa.lookup(m, k, n, d, "fp32", gpu="NVIDIA H200", cc="9.0", db=db)  # another GPU of the same architecture
    assert arch.source == "same-arch" and arch.family == "cusparse"
    wide = sa.lookup(1024, k, 200, d, "fp32", gpu=GPU, db=db)
    assert wide.family == "csr_rowsplit" and wide.note is None


@pytest.mark.shipped_db
def test_the_built_in_default_reads_its_records_verdict_too(tmp_path, monkeypatch):
    """The default (the shipped records' most frequent winner of the cell) is served by the vendor path that its record's
    own baselines preferred, as any record is (the shipped H100 database: record 22's csr_rowsplit beat cuSPARSE by
    1.05x only)."""
    import sparse_autotune as sa
    monkeypatch.setenv("SPARSE_AUTOTUNE_DB", str(tmp_path / "none.sqlite"))
    sa.lookup.cache_clear()
    r = sa.lookup(384, 1536, 200, 0.1, "fp32", gpu="NVIDIA B200")  # no record of this GPU, no compute capability
    assert r.source == "default" and r.family == "cusparse" and "not carried" in r.note


def test_a_win_carried_to_a_larger_n_follows_the_growth_of_the_next_record(tmp_path):
    """MiniLM's 384x1536 fp16 layers on the H200 from H100 records (bench/NOTES.md, session 11): the kernel beat cuBLAS
    by 16 % at N = 128, but its time grows with N (the N = 1024 record: N^0.48) while cuBLAS's hardly does (N^0.11);
    carried to N = 200 the win is gone, so cuBLAS serves N = 200, while N = 128 itself (exact) and a smaller N keep the
    kernel. Carrying never makes a win: a kernel its own baselines beat stays beaten at any N."""
    import sparse_autotune as sa
    from sparse_autotune.store.db import TuningDB
    from tests.records import CONFIG, GPU, make_record
    db = tmp_path / "carry.sqlite"
    tdb = TuningDB(db)
    key = dict(m=384, k=1536, density=0.05, dtype="fp32", cublas_tf32_us=None, cusparse_us=11.2)
    tdb.store(make_record(4.16, CONFIG, n=128, cublas_fp32_us=4.83, **key))
    tdb.store(make_record(11.19, CONFIG, n=1024, cublas_fp32_us=6.08, **key))
    tdb.store(make_record(5.0, CONFIG, n=128, cublas_fp32_us=4.5, **{**key, "m": 768, "cusparse_us": 30.0}))
    tdb.dispose()
    sa.lookup.cache_clear()
    assert sa.lookup(384, 1536, 128, 0.05, "fp32", gpu=GPU, db=db).family == "csr_rowsplit"  # exact: its own verdict
    assert sa.lookup(384, 1536, 96, 0.05, "fp32", gpu=GPU, db=db).family == "csr_rowsplit"  # smaller N: as measured
    r = sa.lookup(384, 1536, 200, 0.05, "fp32", gpu=GPU, db=db)
    assert r.family == "dense" and r.key[2] == 128 and "carried from N=128 to N=200" in r.note
    # beaten at its own N (4.5 < 5.0): cuBLAS at any N, whatever the growth (none above: the default exponents)
    assert sa.lookup(768, 1536, 64, 0.05, "fp32", gpu=GPU, db=db).family == "dense"
    assert sa.lookup(768, 1536, 200, 0.05, "fp32", gpu=GPU, db=db).family == "dense"


def test_carried_to_n_scales_by_the_next_records_slope_or_the_default_exponents():
    """carried_to_n: unchanged at or below the record's N; log-log between the record and the next larger N of the same
    key (clipped to [0, 1.5]); without one, N_GROWTH_KERNEL for the kernel and N_GROWTH_VENDOR for the baselines."""
    from sparse_autotune.store.lookup import N_GROWTH_KERNEL, N_GROWTH_VENDOR, _row, carried_to_n
    from tests.records import make_record

    def row(i, **over):
        rec = make_record(**over)
        rec.id = i
        return _row(rec, "t")
    r = row(1, time_us=4.0, n=128, cusparse_us=8.0, cublas_fp32_us=5.0)
    up = row(2, time_us=16.0, n=512, cusparse_us=8.0, cublas_fp32_us=2.0)  # kernel N^1, cuSPARSE flat, cuBLAS falling
    other = row(3, time_us=1.0, n=256, m=1024, cusparse_us=1.0, cublas_fp32_us=1.0)  # another key: not read
    assert carried_to_n(r, [r, up, other], 128)["time_us"] == 4.0
    assert carried_to_n(r, [r, up, other], 64)["time_us"] == 4.0
    at = carried_to_n(r, [r, up, other], 256)
    assert abs(at["time_us"] - 8.0) < 1e-9 and abs(at["cusparse_us"] - 8.0) < 1e-9
    assert abs(at["cublas_fp32_us"] - 5.0) < 1e-9  # a falling baseline is clipped to flat (exponent 0)
    alone = carried_to_n(r, [r, other], 512)
    assert abs(alone["time_us"] - 4.0 * 4 ** N_GROWTH_KERNEL) < 1e-9
    assert abs(alone["cublas_fp32_us"] - 5.0 * 4 ** N_GROWTH_VENDOR) < 1e-9
    assert alone["cublas_tf32_us"] is None
