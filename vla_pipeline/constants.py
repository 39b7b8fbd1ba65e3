"""Column and batch keys shared by the data, model, env and RL code."""

# --- Parquet buffer columns (one row per env step) -------------------------------------
EPISODE = "episode"  # int64, unique inside a snapshot
STEP = "step"  # int32, env step inside the episode
TASK = "task"  # MetaWorld env name, e.g. "reach-v3"
VARIATION = "variation"  # int16, index into MT1(task, seed).train_tasks
INSTRUCTION = "instruction"
IMAGE = "image"  # PNG bytes, H x W x 3, right way up
PROPRIO = "proprio"  # float32[4]: hand xyz + gripper opening
ACTION = "action"  # float32[4], the action executed at this step
REWARD = "reward"  # float32
SUCCESS = "success"  # bool, success flag after this step
TERMINATED = "terminated"  # bool, episode ended here (success or failure)
TRUNCATED = "truncated"  # bool, episode cut by the time limit here
SOURCE = "source"  # "expert", or the round that produced the episode
EPISODE_LENGTH = "episode_length"  # int32, steps in the episode
STEPS_TO_SUCCESS = "steps_to_success"  # int32, -1 if the episode never succeeded

BUFFER_COLUMNS = (
    EPISODE, STEP, TASK, VARIATION, INSTRUCTION, IMAGE, PROPRIO, ACTION, REWARD,
    SUCCESS, TERMINATED, TRUNCATED, SOURCE, EPISODE_LENGTH, STEPS_TO_SUCCESS,
)

# --- model batch keys -----------------------------------------------------------------
OBS_IMAGE = "image"  # uint8 (B, H, W, 3)
OBS_PROPRIO = "proprio"  # float32 (B, 4), raw (unnormalised)
OBS_TASK_INDEX = "task_index"  # int64 (B,), index into the policy's instruction table
ACTION_CHUNK = "actions"  # float32 (B, K, 4), raw env actions
ACTION_MASK = "action_mask"  # float32 (B, K), 1 where the target action exists

ACTION_DIM = 4
PROPRIO_DIM = 4

# --- files ----------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
TRAINING_STATE_FILE = "training_state.json"
