# Every comparison of the research log's "Session 56, return_cubes", from committed rows; run from the repository
# root. Session 54's rows with temp-lora's and anchor-frame's third draw: every variant over three draws.
set -e
source docs/results/seed_groups.sh
S53=docs/results/return_cubes_s53_efp_tmin900
S54=docs/results/return_cubes_s54_efp_tmin900_memory
S56=docs/results/return_cubes_s56_efp_tmin900_draw2
NO_MEMORY=$S53:no-memory,$S53/draw1:no-memory,$S54/draw2:no-memory
ANCHOR_FRAME=$S53/anchor_frame:anchor-frame,$S54/anchor_frame_draw1:anchor-frame,$S56:anchor-frame
TEMP_LORA=$S54:temp-lora,$S54/draw1:temp-lora,$S56:temp-lora
SLOW_FAST=$S54:slow-fast,$S54/draw1:slow-fast,$S54/draw2:slow-fast
between_variants pooled
compare "$TEMP_LORA" "$NO_MEMORY" --per-cube
compare "$TEMP_LORA" "$ANCHOR_FRAME"
for side in "$TEMP_LORA" "$ANCHOR_FRAME"; do
    compare "$side" docs/results/return_cubes_s53_idm_imagined:no-op
done
