# Speedup per worker count from benchmarks/report.py --plot-data. Usage:
#   gnuplot -e "data='RESULTS.scaling.tsv'; out='benchmarks/results/speedup.svg'; cores=2; machine='...'" benchmarks/speedup.gp
set terminal svg size 900,420 dynamic font "sans,12" background rgb "white"
set output out
set multiplot layout 1,2 title sprintf("CPU-bound map: speedup against a serial loop (%s)", machine)
set xlabel "worker processes (threads for the thread pool)"
set ylabel "speedup vs serial"
set key bottom right
set grid
set xtics 1
set yrange [0:cores + 0.5]
ideal(x) = x < cores ? x : cores
do for [block=0:1] {
    set title (block == 0 ? "tasks of 0.3 ms (2000 of them)" : "tasks of 10 ms (60 of them)")
    plot [0.8:*] ideal(x) with lines dashtype 2 lc rgb "gray" title "ideal (cores)", \
         data index block using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "procpool", \
         data index block using 1:3 with linespoints lw 2 pt 5 lc rgb "#2ca02c" title "thread pool (one process)", \
         data index block using 1:4 with linespoints lw 2 pt 9 lc rgb "#d62728" title "Python multiprocessing.Pool"
}
unset multiplot
