# Every comparison of the research log's "Session 56", from committed rows; run from the repository root.
set -e
source docs/results/seed_groups.sh  # first = seeds 10000-10039, second = 10040-10079
S55=docs/results/retrace_s55_efp_tmin900
S56=docs/results/retrace_s56_efp_tmin900
A=$S55/seed10000
B=$S55/seed10040
OFF=$S56/slow_fast_memory_off
rows() {  # rows ROW: that row at t-min 900 over three draws, seeds 10000-10039 + 10040-10079
    echo "$A:$1,$A/draw1:$1,$A/draw2:$1+$B:$1,$B/draw1:$1,$S56/seed10040_draw2:$1"
}
variant_rows
SLOW_FAST_MEMORY_OFF="$OFF/seed10000:slow-fast,$OFF/seed10000/draw1:slow-fast,$OFF/seed10000/draw2:slow-fast"
SLOW_FAST_MEMORY_OFF+="+$OFF/seed10040:slow-fast,$OFF/seed10040/draw1:slow-fast,$OFF/seed10040/draw2:slow-fast"
# session 55's variants with seeds 10040-10079's third draw: both seed groups pooled, then the second alone
between_variants pooled second
# the slow-fast weights with their memory switched off (--memory-steps 0), same draws
for pick in pooled first second; do
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$SLOW_FAST")"
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$NO_MEMORY")"
    compare "$($pick "$SLOW_FAST_MEMORY_OFF")" "$($pick "$TEMP_LORA")"
done
