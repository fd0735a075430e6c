#!/usr/bin/env bash
# Installs an Apache Kafka broker (kafka_2.13 and its runtime jars, with a log4j2 binding for its slf4j
# logging) from Maven Central with the machine's `mvn`, into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/headrace/kafka-<version>/libs
# and prints that directory. Idempotent: an existing complete install is reused without asking Maven.
# The tests (tests/support/kafka_harness.py) format a KRaft data directory with kafka.tools.StorageTool and run
#   java -cp '<libs>/*' kafka.Kafka server.properties
# Needs Java 17+ and Maven. KAFKA_VERSION overrides the version in scripts/kafka/pom.xml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pom="$here/kafka/pom.xml"
version="${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/headrace"
home="$cache/kafka-$version"
libs="$home/libs"

if [ -f "$home/.complete" ] && [ -f "$libs/kafka_2.13-$version.jar" ]; then
  echo "$libs"
  exit 0
fi

command -v java >/dev/null || { echo "install-kafka: java (17 or newer) is needed to run the broker" >&2; exit 1; }
command -v mvn >/dev/null || { echo "install-kafka: mvn is needed to fetch Kafka from Maven Central" >&2; exit 1; }

echo "install-kafka: fetching Apache Kafka $version (kafka_2.13) from Maven Central into $home" >&2
rm -rf "$libs.tmp"
mkdir -p "$home"
mvn_log="$home/mvn.log"
if ! mvn -q -B -f "$pom" \
  -Dkafka.version="$version" \
  -Dmaven.repo.local="$cache/m2" \
  -DincludeScope=runtime \
  -DoutputDirectory="$libs.tmp" \
  org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies >"$mvn_log" 2>&1; then
  cat "$mvn_log" >&2
  echo "install-kafka: mvn failed (log above, also in $mvn_log)" >&2
  exit 1
fi
[ -f "$libs.tmp/kafka_2.13-$version.jar" ] || { echo "install-kafka: kafka_2.13-$version.jar missing after mvn" >&2; exit 1; }
rm -rf "$libs"
mv "$libs.tmp" "$libs"

# A quiet default logging config for running the broker by hand (the test harness writes its own).
mkdir -p "$home/config"
cat >"$home/config/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
EOF
touch "$home/.complete"
echo "$libs"
