#!/usr/bin/env bash
# Deletes the test queues and exchanges from RabbitMQ (hack/deps.sh after
# start-up, hack/test.sh when it ends).
set -uo pipefail
# The tests declare durable queues and exchanges of their own (named
# <tag>-<10 hex>-q and -x, as the operator declares its queue durable); those
# left behind by earlier runs are deleted here, so they do not pile up (every
# one of them is recovered when the node boots). Best effort.
if out=$(rabbitmqctl eval '
Match = fun(N, Suffix) -> re:run(N, "^[a-z0-9-]+-[0-9a-f]{10}-" ++ Suffix ++ "$") =/= nomatch end,
Qs = [Q || Q <- rabbit_amqqueue:list(<<"/">>), Match(element(4, amqqueue:get_name(Q)), "q")],
[rabbit_amqqueue:delete(Q, false, false, <<"insights-remote tests">>) || Q <- Qs],
Xs = [element(2, X) || X <- rabbit_exchange:list(<<"/">>), Match(element(4, element(2, X)), "x")],
[rabbit_exchange:delete(N, false, <<"insights-remote tests">>) || N <- Xs],
{length(Qs), length(Xs)}.' 2>&1); then
  echo "broker-clean: deleted test queues and exchanges left by earlier runs: $out" >&2
else
  echo "broker-clean: could not delete earlier test queues (not needed to run): $(printf '%s' "$out" | head -1)" >&2
fi
