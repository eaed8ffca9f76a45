# The disk's rise over the first sample in df-every-30s.log: within make engine's first step of
# .ci/run (489 s by .ci/run's own print) and over the whole run. Run from this folder.
awk -v end=489 '{split($1,t,":"); s=t[1]*3600+t[2]*60+t[3]; split($2,a,"="); v=a[2]+0; if(NR==1){b=v; s0=s} if(v-b>all) all=v-b; if(s-s0<=end && v-b>eng) eng=v-b} END {print "make engine (first", end, "s):", eng, "MiB; whole .ci/run:", all, "MiB"}' df-every-30s.log
