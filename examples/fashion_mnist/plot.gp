# Loss against step for every optimizer of the demo: training loss (left) and test loss (right), from
# the first evaluation after step 0 (the initial loss of 2.3 would flatten the rest).
# Called by the demo as: gnuplot -e "csv='<out>/curves.csv'; png='<out>/loss.png'" plot.gp
set datafile separator ","
set terminal pngcairo size 1200,500 font ",11"
set output png
set key top right
set grid
set xlabel "step"
names = "AdamW Muon AdaMuon NAMO NAMO-D"
set multiplot layout 1,2 title "Fashion-MNIST, MLP 784-512-512-10: one schedule, seed and batch order"
set ylabel "training loss (10k training images)"
set logscale y
plot for [n in names] csv skip 1 using ((strcol(1) eq n && $2 > 0) ? $2 : NaN):3 with lines linewidth 2 title n
set ylabel "test loss (10k test images)"
plot for [n in names] csv skip 1 using ((strcol(1) eq n && $2 > 0) ? $2 : NaN):4 with lines linewidth 2 title n
unset multiplot
