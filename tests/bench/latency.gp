# SPDX-License-Identifier: MIT
# Latency percentiles per path / config (make bench-*): one cluster per row of
# the data file written by sbx-bench --dat ("label" min p50 p95 max, ms).
# gnuplot -e "datafile='x.dat'; outfile='x.png'; plottitle='...'" latency.gp
if (!exists("plottitle")) plottitle = "latency"
set terminal pngcairo size 1100,560 noenhanced font "sans,10"
set output outfile
set title plottitle
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set ylabel "ms (log scale)"
set grid ytics
set key outside right top
set xtics rotate by -20
set yrange [*:*]
plot datafile using 2:xtic(1) title "min", \
     '' using 3 title "p50", \
     '' using 4 title "p95", \
     '' using 5 title "max"
