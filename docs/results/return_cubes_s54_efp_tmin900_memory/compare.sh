# Every comparison of the research log's "Session 54", from committed rows; run from the repository root.
set -e
S53=docs/results/return_cubes_s53_efp_tmin900
S54=docs/results/return_cubes_s54_efp_tmin900_memory
NO_OP=docs/results/return_cubes_s53_idm_imagined:no-op
NO_MEMORY=$S53:no-memory,$S53/draw1:no-memory,$S54/draw2:no-memory
SLOW_FAST=$S54:slow-fast,$S54/draw1:slow-fast,$S54/draw2:slow-fast
TEMP_LORA=$S54:temp-lora,$S54/draw1:temp-lora
ANCHOR_FRAME=$S53/anchor_frame:anchor-frame,$S54/anchor_frame_draw1:anchor-frame
MEMORY_OFF=$S54/slow_fast_memory_off:slow-fast
EVERY_STEP=docs/results/return_cubes_s36_expert_first_phase
compare() { python scripts/compare_evaluations.py "$@"; }
for side in "$NO_MEMORY" "$TEMP_LORA" "$ANCHOR_FRAME" "$SLOW_FAST" "$MEMORY_OFF"; do
    compare "$side" $NO_OP
    compare "$side" $NO_OP --per-cube
done
compare "$SLOW_FAST" "$NO_MEMORY"
compare "$SLOW_FAST" "$NO_MEMORY" --per-cube
compare "$SLOW_FAST" "$TEMP_LORA"
compare "$SLOW_FAST" "$ANCHOR_FRAME"
compare "$SLOW_FAST" "$MEMORY_OFF"
compare "$MEMORY_OFF" "$NO_MEMORY"
compare "$TEMP_LORA" "$NO_MEMORY"
compare "$TEMP_LORA" "$ANCHOR_FRAME"
compare "$ANCHOR_FRAME" "$NO_MEMORY"
compare "$SLOW_FAST" $EVERY_STEP:slow-fast
compare "$TEMP_LORA" $EVERY_STEP:temp-lora
