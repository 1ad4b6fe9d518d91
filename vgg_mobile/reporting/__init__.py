"""Tables, the benchmark of every artifact, and the report of a pipeline's output folder."""
