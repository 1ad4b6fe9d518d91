"""`vgg-mobile pipeline`: the stage table, its config, state, runner and summary."""
