"""The names users choose among (collective ops and algorithms, network models, placement policies, routing
samplers): one place, light to import, so the command line can offer them (and answer `--help`) without loading
the simulator. Each module that implements them imports its names from here."""

OPS = ("all_to_all", "all_reduce", "reduce_scatter", "all_gather")
ALGORITHMS = ("auto", "direct", "ring", "bidir_ring", "torus", "rings", "hierarchical", "nvls", "multi_slice")
NETWORK_MODELS = ("fast", "fluid")
SHAPE_ONLY_POLICIES = ("round_robin", "contiguous")  # placements that need no routing statistics
POLICIES = SHAPE_ONLY_POLICIES + ("balanced", "eplb", "topology", "search")
# The placement `simulate`, `report`, `share` and `plan` use when none is given: one default, so a step time that
# `plan` prints is the one `simulate` prints for the same inputs. Balanced, because a run planned with pathsim would
# place its experts so; the validation entries state their published runs' own (static, by expert id) placement.
DEFAULT_POLICY = "balanced"
SAMPLING_MODES = ("auto", "exact", "mean_field")
