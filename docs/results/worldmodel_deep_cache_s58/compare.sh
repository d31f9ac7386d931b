# The planning comparisons of the research log's "Deep feature reuse (session 58)", from committed rows; run from
# the repository root. Seeds 10000-10039, the retrace return alone.
set -e
source docs/results/seed_groups.sh
S58=docs/results/worldmodel_deep_cache_s58/plan_retrace_efp_dc3
O=docs/results/retrace_s33_expert_first_phase
# every sampling step in full (the shipped setting), three draws each (sessions 15-36)
EVERY_NO_MEMORY=docs/results/retrace_expert_first_phase:no-memory,docs/results/retrace_s20_expert_first_phase_draw1:no-memory,$O/draw2:no-memory
EVERY_SLOW_FAST=$O:slow-fast,$O/draw1:slow-fast,$O/draw2:slow-fast
# draw 0 alone: the same seeds and draw (so the same initial noise) as deep reuse's one draw
compare $S58:no-memory docs/results/retrace_expert_first_phase:no-memory
compare $S58:slow-fast $O:slow-fast
# against the three-draw means
compare $S58:no-memory "$EVERY_NO_MEMORY"
compare $S58:slow-fast "$EVERY_SLOW_FAST"
# between the variants, with deep reuse
compare $S58:slow-fast $S58:no-memory
