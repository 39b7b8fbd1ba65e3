"""Column and batch keys shared by the data, model, env and RL code."""

# --- Parquet buffer columns (one row per env step) -------------------------------------
EPISODE = "episode"  # int64, unique inside a shard
STEP = "step"  # int32, env step inside the episode
TASK = "task"  # MetaWorld env name, e.g. "reach-v3"
VARIATION_SEED = "variation_seed"  # int32, seed S of metaworld.MT1(task, seed=S)
VARIATION = "variation"  # int16, index into MT1(task, seed=S).train_tasks
INSTRUCTION = "instruction"
IMAGE_PREFIX = "image_"  # one column per camera, "image_<camera>": PNG bytes, right way up
PROPRIO = "proprio"  # float32[4]: hand xyz + gripper opening
STATE = "state"  # float32[39]: MetaWorld's full state (privileged: diagnosis ablations only)
ACTION = "action"  # float32[4], the action executed at this step
REWARD = "reward"  # float32
SUCCESS = "success"  # bool, success flag after this step
TERMINATED = "terminated"  # bool, episode ended here (success or failure)
TRUNCATED = "truncated"  # bool, episode cut by the time limit here
SOURCE = "source"  # "expert", or the round that produced the episode
EPISODE_LENGTH = "episode_length"  # int32, steps in the episode
STEPS_TO_SUCCESS = "steps_to_success"  # int32, -1 if the episode never succeeded


def image_column(camera: str) -> str:
    return IMAGE_PREFIX + camera


# --- evaluation splits, in the order reports show them ---------------------------------
SPLITS = ("test", "validation", "train")
# iRe-VLA's groups of train configurations: with a demo (the forgetting check) / seen only by RL
GROUPS = ("expert", "new")
REPORTED = SPLITS + GROUPS  # every section an evaluation may hold, in report order

# --- model batch keys -----------------------------------------------------------------
OBS_IMAGE = "image"  # uint8 (B, V, H, W, 3): one frame per camera (V views)
OBS_PROPRIO = "proprio"  # float32 (B, 4), raw (unnormalised)
OBS_STATE = "state"  # float32 (B, 39): read only by a policy built with `privileged_state`
OBS_TASK_INDEX = "task_index"  # int64 (B,), index into the policy's instruction table
ACTION_CHUNK = "actions"  # float32 (B, K, 4), raw env actions
ACTION_MASK = "action_mask"  # float32 (B, K), 1 where the target action exists

ACTION_DIM = 4
PROPRIO_DIM = 4
STATE_DIM = 39
# Privileged diagnosis features taken from the state: the first object's xyz and the goal xyz.
PRIVILEGED_SLICES = ((4, 7), (36, 39))
PRIVILEGED_DIM = sum(b - a for a, b in PRIVILEGED_SLICES)

# --- files ----------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
TRAINING_STATE_FILE = "training_state.json"

# Where a chain of rounds can start: the SFT checkpoints and the demo snapshots under data/.
# `-small`: the small demonstration set (subset_demos stage) and the SFT trained on it.
# `-offline`: CO-RFT's set from MetaWorld's own (slower) scripts, and the SFT trained on it.
ROOT_CHECKPOINTS = ("sft", "sft-small", "sft-offline")
ROOT_BUFFERS = ("demos", "demos-small", "demos-offline")
# Each SFT checkpoint with the demos it was trained on: a chain from one starts from the other.
ROOT_DEMOS = dict(zip(ROOT_CHECKPOINTS, ROOT_BUFFERS))
# Their rows in the report (each paired with SFT on every demo, `sft`, on the same episodes).
ROOT_LABELS = {"sft": "imitation (SFT)", "sft-small": "imitation on the small demo set (demos_small)",
               "sft-offline": "imitation on CO-RFT's demo set (offline_demos)"}
