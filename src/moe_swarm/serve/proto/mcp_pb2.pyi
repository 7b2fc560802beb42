from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    PENDING: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    TRAINING: _ClassVar[JobKind]
    BENCHMARK: _ClassVar[JobKind]
    EVALUATION: _ClassVar[JobKind]
    SWEEP: _ClassVar[JobKind]
JOB_STATE_UNSPECIFIED: JobState
PENDING: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
JOB_KIND_UNSPECIFIED: JobKind
TRAINING: JobKind
BENCHMARK: JobKind
EVALUATION: JobKind
SWEEP: JobKind

class TrainRequest(_message.Message):
    __slots__ = ("config_path", "overrides", "run_id", "request_id", "priority")
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    config_path: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    request_id: str
    priority: int
    def __init__(self, config_path: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("success", "log", "job_id", "job")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    success: bool
    log: str
    job_id: str
    job: Job
    def __init__(self, success: _Optional[bool] = ..., log: _Optional[str] = ..., job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("num_samples", "suites")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SUITES_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    suites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_samples: _Optional[int] = ..., suites: _Optional[_Iterable[str]] = ...) -> None: ...

class BenchmarkResponse(_message.Message):
    __slots__ = ("results", "job_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BenchmarkResult]
    job_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[BenchmarkResult, _Mapping]]] = ..., job_id: _Optional[str] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("prompt", "max_new_tokens", "agents", "rounds", "temperature", "seed", "model_id", "mode", "messages")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    max_new_tokens: int
    agents: int
    rounds: int
    temperature: float
    seed: int
    model_id: str
    mode: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, prompt: _Optional[str] = ..., max_new_tokens: _Optional[int] = ..., agents: _Optional[int] = ..., rounds: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., model_id: _Optional[str] = ..., mode: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class InferChunk(_message.Message):
    __slots__ = ("text", "tokens", "final")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: int
    final: InferResponse
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[int] = ..., final: _Optional[_Union[InferResponse, _Mapping]] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("output", "vote_share", "votes", "forward_passes", "generated_tokens", "flops", "rounds_used", "agents", "model_id", "batch_size", "steps", "default_model_source", "default_model_notice")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    VOTE_SHARE_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FLOPS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_USED_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_NOTICE_FIELD_NUMBER: _ClassVar[int]
    output: str
    vote_share: float
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    forward_passes: int
    generated_tokens: int
    flops: float
    rounds_used: int
    agents: int
    model_id: str
    batch_size: int
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    default_model_source: str
    default_model_notice: str
    def __init__(self, output: _Optional[str] = ..., vote_share: _Optional[float] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., forward_passes: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., flops: _Optional[float] = ..., rounds_used: _Optional[int] = ..., agents: _Optional[int] = ..., model_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., default_model_source: _Optional[str] = ..., default_model_notice: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("text", "vote_share")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOTE_SHARE_FIELD_NUMBER: _ClassVar[int]
    text: str
    vote_share: float
    def __init__(self, text: _Optional[str] = ..., vote_share: _Optional[float] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("answer", "weight")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    answer: str
    weight: float
    def __init__(self, answer: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("metric", "value", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "config_path", "overrides", "run_id", "request_id", "created_unix", "started_unix", "finished_unix", "pid", "exit_code", "message", "log_tail", "run_dir", "checkpoint", "metrics", "cancel_requested", "priority", "queue_position", "restarts")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    config_path: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    request_id: str
    created_unix: float
    started_unix: float
    finished_unix: float
    pid: int
    exit_code: int
    message: str
    log_tail: _containers.RepeatedScalarFieldContainer[str]
    run_dir: str
    checkpoint: str
    metrics: _containers.ScalarMap[str, float]
    cancel_requested: bool
    priority: int
    queue_position: int
    restarts: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., config_path: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., request_id: _Optional[str] = ..., created_unix: _Optional[float] = ..., started_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., log_tail: _Optional[_Iterable[str]] = ..., run_dir: _Optional[str] = ..., checkpoint: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., cancel_requested: _Optional[bool] = ..., priority: _Optional[int] = ..., queue_position: _Optional[int] = ..., restarts: _Optional[int] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "kind", "limit")
    STATES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    kind: JobKind
    limit: int
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., kind: _Optional[_Union[JobKind, str]] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("type", "job", "metrics", "time_unix")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[JobEvent.Type]
        SNAPSHOT: _ClassVar[JobEvent.Type]
        STATE: _ClassVar[JobEvent.Type]
        METRICS: _ClassVar[JobEvent.Type]
    TYPE_UNSPECIFIED: JobEvent.Type
    SNAPSHOT: JobEvent.Type
    STATE: JobEvent.Type
    METRICS: JobEvent.Type
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    type: JobEvent.Type
    job: Job
    metrics: _containers.ScalarMap[str, float]
    time_unix: float
    def __init__(self, type: _Optional[_Union[JobEvent.Type, str]] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., time_unix: _Optional[float] = ...) -> None: ...

class TailLogsRequest(_message.Message):
    __slots__ = ("job_id", "follow", "tail_lines", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    tail_lines: int
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail_lines: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("text", "offset")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    text: str
    offset: int
    def __init__(self, text: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("checkpoint", "model_id", "make_default")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAKE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    model_id: str
    make_default: bool
    def __init__(self, checkpoint: _Optional[str] = ..., model_id: _Optional[str] = ..., make_default: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "checkpoint", "params_total", "params_active", "task", "global_step", "loaded_unix", "is_default", "device", "max_seq_len", "prompt_format", "example_prompt", "loaded")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    LOADED_UNIX_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    checkpoint: str
    params_total: int
    params_active: int
    task: str
    global_step: int
    loaded_unix: float
    is_default: bool
    device: str
    max_seq_len: int
    prompt_format: str
    example_prompt: str
    loaded: bool
    def __init__(self, model_id: _Optional[str] = ..., checkpoint: _Optional[str] = ..., params_total: _Optional[int] = ..., params_active: _Optional[int] = ..., task: _Optional[str] = ..., global_step: _Optional[int] = ..., loaded_unix: _Optional[float] = ..., is_default: _Optional[bool] = ..., device: _Optional[str] = ..., max_seq_len: _Optional[int] = ..., prompt_format: _Optional[str] = ..., example_prompt: _Optional[str] = ..., loaded: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model_id", "default_checkpoint", "default_model_source", "servable")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_SOURCE_FIELD_NUMBER: _ClassVar[int]
    SERVABLE_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model_id: str
    default_checkpoint: str
    default_model_source: str
    servable: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model_id: _Optional[str] = ..., default_checkpoint: _Optional[str] = ..., default_model_source: _Optional[str] = ..., servable: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RpcStats(_message.Message):
    __slots__ = ("method", "requests", "errors", "p50_ms", "p95_ms", "p99_ms", "codes")
    class CodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P95_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    method: str
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    codes: _containers.ScalarMap[str, int]
    def __init__(self, method: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p95_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., codes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "torch_version", "device", "cuda_available", "cuda_device_count", "models", "running_jobs", "rpc_stats", "uptime_s", "auth_enabled", "tls_enabled", "batching_enabled", "max_batch_size", "max_batch_delay_ms", "grpc_version", "caller_scopes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TORCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CUDA_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CUDA_DEVICE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    RPC_STATS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    TLS_ENABLED_FIELD_NUMBER: _ClassVar[int]
    BATCHING_ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    GRPC_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_SCOPES_FIELD_NUMBER: _ClassVar[int]
    version: str
    torch_version: str
    device: str
    cuda_available: bool
    cuda_device_count: int
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    running_jobs: _containers.RepeatedCompositeFieldContainer[Job]
    rpc_stats: _containers.RepeatedCompositeFieldContainer[RpcStats]
    uptime_s: float
    auth_enabled: bool
    tls_enabled: bool
    batching_enabled: bool
    max_batch_size: int
    max_batch_delay_ms: float
    grpc_version: str
    caller_scopes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[str] = ..., torch_version: _Optional[str] = ..., device: _Optional[str] = ..., cuda_available: _Optional[bool] = ..., cuda_device_count: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., running_jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., rpc_stats: _Optional[_Iterable[_Union[RpcStats, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., auth_enabled: _Optional[bool] = ..., tls_enabled: _Optional[bool] = ..., batching_enabled: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., max_batch_delay_ms: _Optional[float] = ..., grpc_version: _Optional[str] = ..., caller_scopes: _Optional[_Iterable[str]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "description", "yaml")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    yaml: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class RunInfo(_message.Message):
    __slots__ = ("run_id", "run_dir", "config_yaml", "summary_json", "checkpoint", "job_ids", "plots")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    PLOTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run_dir: str
    config_yaml: str
    summary_json: str
    checkpoint: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    plots: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run_id: _Optional[str] = ..., run_dir: _Optional[str] = ..., config_yaml: _Optional[str] = ..., summary_json: _Optional[str] = ..., checkpoint: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ..., plots: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRunPlotRequest(_message.Message):
    __slots__ = ("run_id", "name")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    name: str
    def __init__(self, run_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RunPlot(_message.Message):
    __slots__ = ("name", "mime_type", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    mime_type: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., mime_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("run_id", "confirm")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    confirm: str
    def __init__(self, run_id: _Optional[str] = ..., confirm: _Optional[str] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ("run_id", "run_dir", "bytes_freed")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    run_dir: str
    bytes_freed: int
    def __init__(self, run_id: _Optional[str] = ..., run_dir: _Optional[str] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class EvaluationRequest(_message.Message):
    __slots__ = ("checkpoint", "split", "em_problems", "max_batches", "request_id")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EM_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCHES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    split: str
    em_problems: int
    max_batches: int
    request_id: str
    def __init__(self, checkpoint: _Optional[str] = ..., split: _Optional[str] = ..., em_problems: _Optional[int] = ..., max_batches: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "experiment", "status", "global_step", "max_steps", "metric", "metric_value", "checkpoint", "job_ids", "updated_unix")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    experiment: str
    status: str
    global_step: int
    max_steps: int
    metric: str
    metric_value: float
    checkpoint: str
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    updated_unix: float
    def __init__(self, run_id: _Optional[str] = ..., experiment: _Optional[str] = ..., status: _Optional[str] = ..., global_step: _Optional[int] = ..., max_steps: _Optional[int] = ..., metric: _Optional[str] = ..., metric_value: _Optional[float] = ..., checkpoint: _Optional[str] = ..., job_ids: _Optional[_Iterable[str]] = ..., updated_unix: _Optional[float] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class SweepRequest(_message.Message):
    __slots__ = ("config_path", "params", "overrides", "search", "trials", "sweep_id", "request_id", "priority")
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    config_path: str
    params: _containers.RepeatedScalarFieldContainer[str]
    overrides: _containers.RepeatedScalarFieldContainer[str]
    search: str
    trials: int
    sweep_id: str
    request_id: str
    priority: int
    def __init__(self, config_path: _Optional[str] = ..., params: _Optional[_Iterable[str]] = ..., overrides: _Optional[_Iterable[str]] = ..., search: _Optional[str] = ..., trials: _Optional[int] = ..., sweep_id: _Optional[str] = ..., request_id: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class SweepTrial(_message.Message):
    __slots__ = ("number", "run_id", "overrides", "metric", "value", "status", "global_step", "checkpoint")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STEP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    number: int
    run_id: str
    overrides: _containers.RepeatedScalarFieldContainer[str]
    metric: str
    value: float
    status: str
    global_step: int
    checkpoint: str
    def __init__(self, number: _Optional[int] = ..., run_id: _Optional[str] = ..., overrides: _Optional[_Iterable[str]] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., status: _Optional[str] = ..., global_step: _Optional[int] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class SweepResults(_message.Message):
    __slots__ = ("job_id", "job", "sweep_id", "search", "metric", "mode", "trials", "best", "markdown")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job: Job
    sweep_id: str
    search: str
    metric: str
    mode: str
    trials: _containers.RepeatedCompositeFieldContainer[SweepTrial]
    best: int
    markdown: str
    def __init__(self, job_id: _Optional[str] = ..., job: _Optional[_Union[Job, _Mapping]] = ..., sweep_id: _Optional[str] = ..., search: _Optional[str] = ..., metric: _Optional[str] = ..., mode: _Optional[str] = ..., trials: _Optional[_Iterable[_Union[SweepTrial, _Mapping]]] = ..., best: _Optional[int] = ..., markdown: _Optional[str] = ...) -> None: ...
