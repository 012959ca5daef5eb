# Validation loss of the GPT demo, mean over seeds: against step (left) and against training wall time
# (right), from the first evaluation after step 0 (the initial loss of 5.5 would flatten the rest).
# Called by the demo as: gnuplot -e "csv='<out>/mean_curves.csv'; png='<out>/loss.png'" plot.gp
set datafile separator ","
set terminal pngcairo size 1200,500 font ",11"
set output png
set key top right
set grid
names = "AdamW Muon AdaMuon NAMO NAMO-D Muon+budget AdaMuon+budget"
set multiplot layout 1,2 title "Byte-level GPT on Debian's fortunes: validation loss, mean over seeds"
set ylabel "validation loss (nats per byte)"
# linear y: the curves span about 1.7 to 3.6 nats, where a log axis would squash them
set xlabel "step"
# the adaptive-budget variants dashed, in their base optimizer's colour
colour(n) = strstrt(n, "Muon+") == 1 ? 2 : (strstrt(n, "AdaMuon+") == 1 ? 3 : 0)
dash(n) = strstrt(n, "+") > 0 ? 2 : 1
plot for [i = 1:words(names)] csv skip 1 using ((strcol(1) eq word(names, i) && $2 > 0) ? $2 : NaN):5 \
     with lines linewidth 2 linecolor (colour(word(names, i)) > 0 ? colour(word(names, i)) : i) \
     dashtype dash(word(names, i)) title word(names, i)
set xlabel "training wall time [s] (evaluations excluded)"
plot for [i = 1:words(names)] csv skip 1 using ((strcol(1) eq word(names, i) && $2 > 0) ? $3 : NaN):5 \
     with lines linewidth 2 linecolor (colour(word(names, i)) > 0 ? colour(word(names, i)) : i) \
     dashtype dash(word(names, i)) title word(names, i)
unset multiplot
