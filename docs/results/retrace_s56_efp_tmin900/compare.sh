# Every comparison of the research log's "Session 56", from committed rows; run from the repository root.
set -e
S55=docs/results/retrace_s55_efp_tmin900
S56=docs/results/retrace_s56_efp_tmin900
A=$S55/seed10000
B=$S55/seed10040
OFF=$S56/slow_fast_memory_off
rows() {  # rows ROW: that row at t-min 900 over three draws, seeds 10000-10039 + 10040-10079
    echo "$A:$1,$A/draw1:$1,$A/draw2:$1+$B:$1,$B/draw1:$1,$S56/seed10040_draw2:$1"
}
pooled() { echo "$1"; }
first() { echo "${1%%+*}"; }  # seeds 10000-10039 only
second() { echo "${1#*+}"; }  # seeds 10040-10079 only
compare() { python scripts/compare_evaluations.py "$@"; }
NO_MEMORY=$(rows no-memory)
ANCHOR_FRAME=$(rows anchor-frame)
TEMP_LORA=$(rows temp-lora)
SLOW_FAST=$(rows slow-fast)
SLOW_FAST_MEMORY_OFF="$OFF/seed10000:slow-fast,$OFF/seed10000/draw1:slow-fast,$OFF/seed10000/draw2:slow-fast"
SLOW_FAST_MEMORY_OFF+="+$OFF/seed10040:slow-fast,$OFF/seed10040/draw1:slow-fast,$OFF/seed10040/draw2:slow-fast"
# session 55's variants with seeds 10040-10079's third draw: both seed groups pooled, then the second alone
for pick in pooled second; do
    compare "$($pick "$SLOW_FAST")" "$($pick "$NO_MEMORY")"
    compare "$($pick "$SLOW_FAST")" "$($pick "$TEMP_LORA")"
    compare "$($pick "$SLOW_FAST")" "$($pick "$ANCHOR_FRAME")"
    compare "$($pick "$TEMP_LORA")" "$($pick "$NO_MEMORY")"
    compare "$($pick "$ANCHOR_FRAME")" "$($pick "$NO_MEMORY")"
done
# the slow-fast weights with their memory switched off (--memory-steps 0), same draws
for pick in pooled first second; do
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$SLOW_FAST")"
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$NO_MEMORY")"
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$TEMP_LORA")"
done
