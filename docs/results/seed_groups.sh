# Sourced by the results folders' compare.sh scripts. A side "ROWS1+ROWS2" is scripts/compare_evaluations.py's
# pooling of two seed groups; these pick the pooled side or one group's rows from it.
pooled() { echo "$1"; }
first() { echo "${1%%+*}"; }
second() { echo "${1#*+}"; }
compare() { python scripts/compare_evaluations.py "$@"; }
# The comparisons between the memory variants on each named pick (pooled, first, second), from the rows in
# NO_MEMORY, ANCHOR_FRAME, TEMP_LORA and SLOW_FAST.
between_variants() {
    for pick in "$@"; do
        compare "$($pick "$SLOW_FAST")" "$($pick "$NO_MEMORY")"
        compare "$($pick "$SLOW_FAST")" "$($pick "$TEMP_LORA")"
        compare "$($pick "$SLOW_FAST")" "$($pick "$ANCHOR_FRAME")"
        compare "$($pick "$TEMP_LORA")" "$($pick "$NO_MEMORY")"
        compare "$($pick "$ANCHOR_FRAME")" "$($pick "$NO_MEMORY")"
    done
}
# NO_MEMORY, ANCHOR_FRAME, TEMP_LORA and SLOW_FAST from the caller's `rows VARIANT` (that variant's rows).
variant_rows() {
    NO_MEMORY=$(rows no-memory)
    ANCHOR_FRAME=$(rows anchor-frame)
    TEMP_LORA=$(rows temp-lora)
    SLOW_FAST=$(rows slow-fast)
}
