"""Job requests and responses in OpenAI's shapes."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.tables import FineTuningJob, JobCheckpoint, JobEvent
from app.core.timestamps import unix
from app.ml.scoring.settings import REFIT_MIN_HELD_OUT_SHARE, EvaluationSettings, Refit

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Bounds go on the number, not the union: on the union, an explicit "auto" met `ge` and raised a TypeError (500).
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"


class SupervisedMethod(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Auto | Annotated[float, Field(gt=0, le=10)] = Field(
        default="auto", description="how far from the reference; auto: 0.1"
    )


class DpoMethod(BaseModel):
    hyperparameters: DpoHyperparameters | None = None


class DistillationMethod(BaseModel):
    """Our method: a teacher model answers the training file's prompts, and the job's model learns its answers."""

    model_config = ConfigDict(extra="forbid")
    teacher_model: str = Field(description="any model the organisation may use: base, fine-tuned or checkpoint")
    max_tokens: int = Field(default=256, ge=1, le=4096, description="the longest answer the teacher gives")
    temperature: float = Field(default=0.0, ge=0, le=2, description="the teacher's sampling; 0: greedy")
    hyperparameters: Hyperparameters | None = None  # of the student's supervised fine-tuning


class Method(BaseModel):
    # The SDK's own tests send every sub-object whatever the type; only the one named by `type` is read.
    type: Literal["supervised", "dpo", "distillation", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    distillation: DistillationMethod | None = None
    reinforcement: dict[str, Any] | None = None


class DpoOptions(BaseModel):
    """Our extension object for DPO jobs (`extra_body={"dpo": {...}}`): Together's variants of the loss."""

    model_config = ConfigDict(extra="forbid")
    rpo_alpha: float = Field(default=0.0, ge=0, le=10, description="adds this × the chosen answers' NLL (RPO)")
    length_normalized: bool = Field(default=False, description="log-ratios divided by the answer's token count")
    reference_free: bool = Field(default=False, description="no reference model terms")
    simpo_gamma: float = Field(default=0.0, ge=0, le=10, description="> 0: SimPO with this target margin")


class LoraOptions(BaseModel):
    """Our extension object (`extra_body={"lora": {...}}` with the SDK); anything left out takes the base
    model's default from the registry."""

    model_config = ConfigDict(extra="forbid")
    r: int | None = Field(default=None, ge=1, le=256)
    alpha: int | None = Field(default=None, ge=1, le=1024)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: list[str] | None = Field(default=None, min_length=1)
    max_seq_length: int | None = Field(default=None, ge=16)
    warmup_ratio: float | None = Field(default=None, ge=0, le=0.5)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = None
    max_grad_norm: float | None = Field(default=None, ge=0, description="0 turns gradient clipping off")
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    train_on_inputs: bool | None = None  # loss on every token (prompt included), as Together's option
    # QLoRA: base weights in 4-bit NF4 (CUDA only); "none" trains a base model whose registry default is 4-bit
    # at full precision.
    quantization: Literal["4bit", "none"] | None = None


class EvaluationOptions(BaseModel):
    """Our extension object (`extra_body={"evaluation": {...}}`): the held-out evaluation at the end of the job."""

    model_config = ConfigDict(extra="forbid")
    max_examples: int = Field(
        default=EvaluationSettings.max_examples,
        ge=0,
        le=1000,
        description="held-out examples answered; 0: no evaluation",
    )
    max_tokens: int = Field(
        default=EvaluationSettings.max_tokens, ge=1, le=4096, description="the longest answer generated"
    )
    checkpoints: bool = Field(
        default=EvaluationSettings.checkpoints,
        description="also list the latest 3 epochs' checkpoints, with their held-out loss and token accuracy",
    )
    refit: Refit = Field(
        default=EvaluationSettings.refit,
        description=(
            "train the published model again on every example, held-out ones included, for the epochs the held-out"
            f' split chose: true, false, or "auto" (when the held-out examples are at least'
            f" {REFIT_MIN_HELD_OUT_SHARE:.0%} of the data); the report still measures the model that never saw them,"
            " and says so"
        ),
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    lora: LoraOptions | None = None
    evaluation: EvaluationOptions | None = None
    dpo: DpoOptions | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = []
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] = []
    metadata: dict[str, str] | None
    method: dict[str, Any]
    estimated_finish: int | None = None
    user_provided_suffix: str | None
    lora: dict[str, Any]
    evaluation: EvaluationOptions

    @classmethod
    def of(cls, row: FineTuningJob) -> "JobPublic":
        return cls(
            id=row.id,
            created_at=unix(row.created_at) or 0,
            error=JobError(**row.error) if row.error else None,
            fine_tuned_model=row.fine_tuned_model,
            finished_at=unix(row.finished_at),
            hyperparameters=row.hyperparameters,
            model=row.model,
            organization_id=row.organization_id,
            seed=row.seed,
            status=row.status,
            trained_tokens=row.trained_tokens,
            training_file=row.training_file,
            validation_file=row.validation_file,
            metadata=row.job_metadata,
            method=_method(row),
            user_provided_suffix=row.suffix,
            result_files=row.result_files,
            estimated_finish=unix(row.estimated_finish),
            lora=row.training_options,
            evaluation=EvaluationOptions(**(row.evaluation_options or {})),
        )


def _method(row: FineTuningJob) -> dict[str, Any]:
    """OpenAI's `method` echo: the type, and its resolved hyperparameters (DPO's with beta and our options)."""
    if row.method.get("type") == "distillation":
        return {
            "type": "distillation",
            "distillation": {"hyperparameters": row.hyperparameters, **row.method["distillation"]},
        }
    if row.method.get("type") == "dpo":
        options = dict(row.method["dpo"])
        hyperparameters = row.hyperparameters | {"beta": options.pop("beta")}
        return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters, **options}}
    return {"type": "supervised", "supervised": {"hyperparameters": row.hyperparameters}}


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, row: JobEvent) -> "EventPublic":
        return cls(
            id=row.id,
            created_at=unix(row.created_at) or 0,
            level=row.level,
            message=row.message,
            type=row.type,
            data=row.data,
        )


class JobEvaluationReport(BaseModel):
    """A job's evaluation report (extension): the report the worker wrote when the job succeeded (held-out
    examples, base and fine-tuned scores, `verdict`, `warnings`, `worst_examples`), beside these two fields."""

    model_config = ConfigDict(extra="allow")
    object: Literal["fine_tuning.job.evaluation"] = "fine_tuning.job.evaluation"
    fine_tuning_job_id: str


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int

    @classmethod
    def of(cls, row: JobCheckpoint) -> "CheckpointPublic":
        return cls(
            id=row.id,
            created_at=unix(row.created_at) or 0,
            fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
            fine_tuning_job_id=row.job_id,
            metrics=row.metrics,
            step_number=row.step_number,
        )
