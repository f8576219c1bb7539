#!/bin/sh
# Runs `gradfleet "$@"` as a Kubernetes Job container and passes its exit status on, with
# one change: when the pod receives SIGTERM (on eviction, preemption, drain or deletion),
# the container exits with 143 even though gradfleet itself exits with 0 after a graceful
# stop. Otherwise the Job would count the stopped coordinator or worker as
# complete and never start it again; as a failure, a new pod resumes the work (the Jobs'
# podFailurePolicy does not count disruptions against backoffLimit).
# The signal is forwarded, so the coordinator still writes its checkpoint before exiting.

gradfleet "$@" &
child=$!
stopping=""

forward() {
  stopping="$1"
  kill -s "$1" "$child" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT

# A trapped signal interrupts `wait`, so wait again until gradfleet has really exited.
status=0
wait "$child" || status=$?
while kill -0 "$child" 2>/dev/null; do
  status=0
  wait "$child" || status=$?
done

if [ "$stopping" = TERM ]; then exit 143; fi
if [ "$stopping" = INT ]; then exit 130; fi
exit "$status"
