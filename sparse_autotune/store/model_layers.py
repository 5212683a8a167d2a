"""The model-layer table (`sat_model_layers`): which layer of a tuned model maps to which tuned problem."""
from __future__ import annotations

import datetime as _dt

from sqlalchemy import Float, String, UniqueConstraint, delete, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import UserError
from .db import Record


class ModelBase(DeclarativeBase):
    pass


class ModelLayer(ModelBase):
    """One layer of a tuned model at one (N, dtype) on one GPU, and the problem (study) that covers it.

    A table of its own, created where missing: files without it stay readable by every version (it is not part
    of the records schema, so the schema version is unchanged), and `db export/merge` copy records only.
    Integer and date columns take their SQL types from their annotations (INTEGER, DATETIME)."""

    __tablename__ = "sat_model_layers"
    __table_args__ = (UniqueConstraint("model", "layer", "n", "dtype", "gpu_name", name="uq_sat_model_layer"),)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    layer: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(16))
    gpu_name: Mapped[str] = mapped_column(String(128))
    m: Mapped[int]
    k: Mapped[int]
    n: Mapped[int]
    nnz: Mapped[int]
    density: Mapped[float] = mapped_column(Float)  # this layer's own density
    problem_density: Mapped[float] = mapped_column(Float)  # the tuned problem's (the representative's) density
    dtype: Mapped[str] = mapped_column(String(8))
    representative: Mapped[str] = mapped_column(String(512))  # the layer whose matrix was tuned
    study_name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # done | interrupted | failed
    record_id: Mapped[int | None]
    position: Mapped[int]  # the layer's index in the checkpoint
    updated_at: Mapped[_dt.datetime]


def _cannot_write(db, exc: SQLAlchemyError) -> UserError:
    text = str(exc).splitlines()
    return UserError(f"cannot write database {db.label!r}: {text[0] if text else type(exc).__name__}")


def ensure_model_table(db) -> None:
    """Create the table in a TuningDB where it is missing."""
    try:
        with db._writing() as conn:
            ModelBase.metadata.create_all(conn)
    except SQLAlchemyError as exc:
        raise _cannot_write(db, exc) from None


def has_model_table(engine) -> bool:
    try:
        with engine.connect() as conn:
            return ModelLayer.__tablename__ in inspect(conn).get_table_names()
    except SQLAlchemyError:
        return False


def model_layers(engine, model: str | None = None, gpu: str | None = None) -> list[ModelLayer]:
    if not has_model_table(engine):
        return []
    q = select(ModelLayer)
    if model is not None:
        q = q.where(ModelLayer.model == model)
    if gpu is not None:
        q = q.where(ModelLayer.gpu_name == gpu)
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(q.order_by(ModelLayer.model, ModelLayer.dtype, ModelLayer.n, ModelLayer.position)))


def write_layer_rows(db, model: str, gpu: str, job, problem_density: float, name: str, status: str,
                     record_id: int | None, positions: dict) -> None:
    """The rows of a job's layers (a core.checkpoint.Job: one tuned problem and the layers it stands for), replacing
    their earlier rows; positions: layer name -> index in the checkpoint."""
    now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    try:
        with db._write_session() as s:
            for lay in job.layers:
                s.execute(delete(ModelLayer).where(ModelLayer.model == model, ModelLayer.layer == lay.name,
                                                   ModelLayer.n == job.n, ModelLayer.dtype == job.dtype,
                                                   ModelLayer.gpu_name == gpu))
                s.add(ModelLayer(model=model, layer=lay.name, kind=lay.kind, gpu_name=gpu, m=job.m, k=job.k, n=job.n,
                                 nnz=lay.nnz, density=round(lay.density, 6), problem_density=problem_density,
                                 dtype=job.dtype, representative=job.rep.name, study_name=name, status=status,
                                 record_id=record_id, position=positions[lay.name], updated_at=now))
    except SQLAlchemyError as exc:
        raise _cannot_write(db, exc) from None


def study_done(db, name: str, budget: int) -> tuple[bool, int | None]:
    """(done, record id): a problem is done when a record of its study spent the trial budget (a larger budget tunes
    it further), or a model row says it is done and no record exists (nothing could run)."""
    with Session(db.engine) as s:
        row = s.scalars(select(ModelLayer).where(ModelLayer.study_name == name, ModelLayer.status == "done")
                        .order_by(ModelLayer.id.desc()).limit(1)).first()
        rec = s.scalars(select(Record).where(Record.study_name == name).order_by(Record.trials.desc(), Record.id.desc())
                        .limit(1)).first()
        if rec is not None and rec.trials >= budget:
            return True, rec.id
        if row is not None and rec is None:
            return True, row.record_id
    return False, None
