"""kubetune.io/v1alpha1: FineTuneJob and ModelServe (reference: docs/api-reference.md, generated from these models)."""

from .common import (
    API_VERSION,
    GROUP,
    TARGET_CLUSTER,
    TARGET_LOCAL,
    VERSION,
    Condition,
    EnvVar,
    KubeModel,
    LocalObjectReference,
    ObjectMeta,
    Problem,
    SecretKeyRef,
    Toleration,
)
from .evaluation import (
    EstimateStatus,
    EvalDataset,
    EvaluationSpec,
    EvaluationStatus,
    Gate,
    GateVerdict,
    LmEvalSpec,
    MetricResult,
)
from .finetunejob import (
    ADAPTER_METHODS,
    ENCODER_TASKS,
    PEFT_METHODS,
    CheckpointStatus,
    DatasetSpec,
    FineTuneJob,
    FineTuneJobSpec,
    FineTuneJobStatus,
    MethodSpec,
    ModelSpec,
    ParentResult,
    Progress,
    ResultStatus,
    TrainingSpec,
)
from .modelserve import (
    AdapterSource,
    ModelServe,
    ModelServeSpec,
    ModelServeStatus,
    ModelSource,
    Revision,
    ServedAdapter,
    VLLMSpec,
)
from .objective import (
    CLASSIFICATION_TASKS,
    OBJECTIVES,
    REWARD_FUNCTIONS,
    RL_OBJECTIVES,
    TASK_FORMATS,
    ObjectiveFacts,
    ObjectiveSpec,
    RLReward,
    RLSpec,
    format_readers,
    implied_task,
    reward_function_args,
)
from .trainerconfig import (
    ChainResolution,
    ResolvedModel,
    TrainerConfig,
    TrainerRuntime,
    config_hash,
    pvc_claims,
    pvc_local_path,
)
from .uris import (
    ParsedURI,
    URIError,
    check_public_https_url,
    forbidden_address_reason,
    forbidden_host_reason,
    parse_uri,
)
from .validation import KINDS, Validated, validate_document

__all__ = [
    "ADAPTER_METHODS", "API_VERSION", "AdapterSource", "CLASSIFICATION_TASKS", "ENCODER_TASKS", "CheckpointStatus", "Condition",
    "DatasetSpec", "EnvVar", "FineTuneJob", "FineTuneJobSpec", "FineTuneJobStatus", "GROUP", "KINDS", "KubeModel",
    "LocalObjectReference", "MethodSpec", "ModelServe", "ModelServeSpec", "ModelServeStatus", "ModelSource",
    "ModelSpec", "ObjectMeta", "ParsedURI", "Problem", "Progress", "ResultStatus", "Revision", "SecretKeyRef", "ServedAdapter", "VLLMSpec",
    "TARGET_CLUSTER", "TARGET_LOCAL", "Toleration", "TrainerConfig", "TrainerRuntime", "TrainingSpec", "URIError", "VERSION", "Validated",
    "ChainResolution", "OBJECTIVES", "ObjectiveFacts", "ObjectiveSpec", "PEFT_METHODS", "TASK_FORMATS", "format_readers",
    "implied_task", "ParentResult", "ResolvedModel", "REWARD_FUNCTIONS", "RL_OBJECTIVES", "RLReward", "RLSpec", "reward_function_args",
    "EstimateStatus", "EvalDataset", "EvaluationSpec", "EvaluationStatus", "Gate", "GateVerdict", "LmEvalSpec", "MetricResult",
    "check_public_https_url", "config_hash", "pvc_claims", "pvc_local_path", "forbidden_address_reason", "forbidden_host_reason", "parse_uri", "validate_document",
]  # fmt: skip
