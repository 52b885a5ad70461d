#!/bin/sh
# The safedeploy.compose test application: busybox httpd on ${APP_BIND:-127.0.0.1}:$APP_PORT (APP_BIND=0.0.0.0
# behind a published port) whose behaviour is chosen by APP_MODE (baked in at build time, overridable at run time):
#   healthy    /cgi-bin/health answers 200 with {"status":"ok",...} at once
#   slow       starts listening only after APP_DELAY seconds (default 8)
#   crash      logs a fatal error and exits 1 after a second (a restart policy makes it loop)
#   error500   listens, but /cgi-bin/health answers 500
#   wrongport  listens on APP_PORT+1, so probes of APP_PORT are refused
#   flap       every third health request answers 503
# A one-off command (`compose run SERVICE CMD...`, as release hooks do) runs instead of the app, the way
# docker-entrypoint scripts hand their arguments to exec.
if [ "$#" -gt 0 ]; then
  exec "$@"
fi
port="${APP_PORT:-8080}"
mode="${APP_MODE:-healthy}"
state=/run/app
mkdir -p "$state"
cp -r /srv/www "$state/"
printf '%s' "$mode" > "$state/mode"
printf '%s' "${APP_VERSION:-unknown}" > "$state/version"
echo "app ${APP_VERSION:-unknown}: mode=$mode port=$port"
case "$mode" in
  crash)
    sleep 1
    echo "app ${APP_VERSION:-unknown}: fatal: cannot reach database at db:5432" >&2
    exit 1
    ;;
  slow)
    echo "app: warming up for ${APP_DELAY:-8}s"
    sleep "${APP_DELAY:-8}"
    ;;
  wrongport)
    port=$((port + 1))
    ;;
esac
echo "app: listening on 127.0.0.1:$port"
# As PID 1 httpd would ignore SIGTERM and every stop would wait out Docker's grace period.
httpd -f -p "${APP_BIND:-127.0.0.1}:$port" -h "$state/www" &
trap 'kill "$!" 2>/dev/null; exit 0' TERM INT
wait "$!"
