# Every comparison of the research log's "Session 55", from committed rows; run from the repository root.
set -e
source docs/results/seed_groups.sh  # first = seeds 10000-10039, second = 10040-10079
S55=docs/results/retrace_s55_efp_tmin900
A=$S55/seed10000
B=$S55/seed10040
rows() {  # rows ROW: that row at t-min 900 over every draw, seeds 10000-10039 + 10040-10079
    echo "$A:$1,$A/draw1:$1,$A/draw2:$1+$B:$1,$B/draw1:$1"
}
variant_rows
NO_OP=docs/results/retrace_expert_first_phase:no-op+$B:no-op
# between the variants: both seed groups pooled, then each alone
between_variants pooled first second
# against holding still
for side in "$NO_MEMORY" "$ANCHOR_FRAME" "$TEMP_LORA" "$SLOW_FAST"; do
    compare "$side" $NO_OP
done
# against every sampling step guided (the shipped setting; three draws on each seed group, sessions 15-36)
O=docs/results/retrace_s33_expert_first_phase
N1=docs/results/retrace_s35_seeds_10040/shipped_rows
N2=docs/results/retrace_s36_seeds_10040_draws
EVERY_NO_MEMORY=docs/results/retrace_expert_first_phase:no-memory,docs/results/retrace_s20_expert_first_phase_draw1:no-memory,$O/draw2:no-memory+$N1:no-memory,$N2/draw1:no-memory,$N2/draw2:no-memory
EVERY_TEMP_LORA=$O:temp-lora,$O/draw1:temp-lora,$O/draw2:temp-lora+$N1:temp-lora,$N2/draw1:temp-lora,$N2/draw2:temp-lora
EVERY_SLOW_FAST=$O:slow-fast,$O/draw1:slow-fast,$O/draw2:slow-fast+$N1:slow-fast,$N2/draw1:slow-fast,$N2/draw2:slow-fast
EVERY_ANCHOR_FRAME=docs/results/retrace_expert_first_phase:anchor-frame,docs/results/retrace_s20_expert_first_phase_draw1:anchor-frame,$O/draw2_anchor_frame:anchor-frame
compare "$NO_MEMORY" "$EVERY_NO_MEMORY"
compare "$TEMP_LORA" "$EVERY_TEMP_LORA"
compare "$SLOW_FAST" "$EVERY_SLOW_FAST"
compare "$(first "$ANCHOR_FRAME")" "$EVERY_ANCHOR_FRAME"
