module headrace/bench/loadgen

go 1.21
