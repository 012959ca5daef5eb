# Validation loss of the GPT demo, mean over seeds: against step (left) and against training wall time
# (right), from the first evaluation after step 0 (the initial loss of 5.5 would flatten the rest).
# Called by the demo as: gnuplot -e "csv='<out>/mean_curves.csv'; png='<out>/loss.png'" plot.gp
set datafile separator ","
set terminal pngcairo size 1200,500 font ",11"
set output png
set key top right
set grid
names = "AdamW Muon AdaMuon NAMO NAMO-D"
set multiplot layout 1,2 title "Byte-level GPT on Debian's fortunes: validation loss, mean over seeds"
set ylabel "validation loss (nats per byte)"
# linear y: the curves span about 1.7 to 3.6 nats, where a log axis would squash them
set xlabel "step"
plot for [n in names] csv skip 1 using ((strcol(1) eq n && $2 > 0) ? $2 : NaN):5 with lines linewidth 2 title n
set xlabel "training wall time [s] (evaluations excluded)"
plot for [n in names] csv skip 1 using ((strcol(1) eq n && $2 > 0) ? $3 : NaN):5 with lines linewidth 2 title n
unset multiplot
