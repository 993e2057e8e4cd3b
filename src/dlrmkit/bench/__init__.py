"""The MLPerf benchmark: LoadGen's QSL and SUT for DLRM, sample aggregation, settings from
mlperf.conf/user.conf, result JSON, the accuracy tool and plots. A model is only a function from a
batch of pairs to predictions here."""
