#!/bin/bash
# A bash script for bash-static under ftvm: builtins only (no command substitution, pipes
# or external commands, so the shell never forks). Reads the CSV given as $1 (default:
# data.csv beside this script). Lines that differ from run to run start with "nondet:".

here=${BASH_SOURCE%/*}
[[ $here == "$BASH_SOURCE" ]] && here=.
csv=${1:-$here/data.csv}

# Functions: a return value through a variable, and a recursive one.
square() { local -n out=$1; out=$(( $2 * $2 )); }
fib() {
    local n=$1 a b
    if (( n < 2 )); then fibr=$n; return; fi
    fib $(( n - 1 )); a=$fibr
    fib $(( n - 2 )); b=$fibr
    fibr=$(( a + b ))
}

square sq 12
fib 15
echo "square of 12: $sq; fib(15): $fibr"

# Arithmetic and a loop.
sum=0
for (( i = 1; i <= 100; i++ )); do
    (( i % 3 == 0 || i % 5 == 0 )) && (( sum += i ))
done
printf 'sum of multiples of 3 or 5 up to 100: %d\n' "$sum"
printf 'hex %x, octal %o, power %d\n' 255 64 $(( 2 ** 20 ))

# String operations.
s="fault tolerant virtual machines"
echo "length ${#s}; upper ${s^^}; words ${s// /_}"
echo "substring '${s:6:8}'; suffix removed '${s%% *}'; prefix removed '${s#* }'"
printf -v padded '%-10s|' left
echo "padded: $padded"

# [[ ]]: patterns and regular expressions.
for word in apple Banana cherry 42 x7; do
    if [[ $word =~ ^[0-9]+$ ]]; then kind=number
    elif [[ $word == [[:upper:]]* ]]; then kind=capitalised
    elif [[ $word =~ ^([a-z])[a-z]*$ ]]; then kind="lower, starts with ${BASH_REMATCH[1]}"
    else kind=other; fi
    echo "$word: $kind"
done

# Arrays, an associative array and case: totals per city from the CSV.
declare -A total count
rows=0
while IFS=, read -r id name city amount date; do
    [[ $id == id ]] && continue
    cents=${amount/./}
    (( total[$city] += 10#$cents, count[$city]++, rows++ ))
    case $date in
        2024-0[1-6]-*) (( first_half++ )) ;;
        *) (( second_half++ )) ;;
    esac
done < "$csv"
echo "rows: $rows; first half: $first_half; second half: $second_half"
cities=("${!total[@]}")
# Sort the city names (an insertion sort: no external sort).
for (( i = 1; i < ${#cities[@]}; i++ )); do
    c=${cities[i]}
    for (( j = i - 1; j >= 0; j-- )); do
        [[ ${cities[j]} > $c ]] || break
        cities[j+1]=${cities[j]}
    done
    cities[j+1]=$c
done
for c in "${cities[@]}"; do
    printf '%-6s %2d rows %10d.%02d\n' "$c" "${count[$c]}" $(( total[$c] / 100 )) $(( total[$c] % 100 ))
done

# $RANDOM: unseeded differs from run to run; seeded is a fixed sequence.
echo "nondet: unseeded RANDOM $RANDOM $RANDOM"
r=$RANDOM
(( r >= 0 && r < 32768 )) && echo "RANDOM in range: yes"
RANDOM=42
seq=""
for i in 1 2 3 4 5; do seq+=" $(( RANDOM % 100 ))"; done
echo "seeded RANDOM % 100:$seq"

echo "done"
exit 0
