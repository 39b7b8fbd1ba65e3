"""MetaWorld tasks, guarded rendering, the chunk executor, vector envs and scripted experts."""
