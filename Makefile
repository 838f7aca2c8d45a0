# Temporal, secured end to end: operator entry points. `make` alone lists them.
#
# Variables (environment or `make VAR=value`):
#   COMPOSE_PROJECT_NAME  compose project (default: temporal-bundle, from docker-compose.prod.yml)
#   BUNDLE_CONFIG_FILE    the bundle config (default: ./bundle.yaml, created from the example)
#   IMAGES_ENV            a file of image variables to use, e.g. build/standin-images.env
#   UP_TIMEOUT            seconds `make up` waits for health (default: 300)
#   PROFILE               compose profiles to enable, e.g. monitoring (Prometheus, expiry exporter, Grafana)
#   KIND, ROTATE_ARGS     for `make rotate`;  ROLE, DEST for `make export`;  SERVICE for `make logs`
#   DEST                  for `make export-helm` too (default there: ./helm-export)
#   BACKUP                archive for `make backup` (default: ./backups/temporal-bundle-<UTC time>.tbak)
#                         and `make restore` (required)
#   BACKUP_PASSPHRASE_FILE, BACKUP_PASSPHRASE  the archive's passphrase: a file, or the variable's
#                         value in the environment (never on a command line)
#   HSM_PIN_FILE          keys.backend pkcs11: the host file holding the token's user PIN, mounted
#                         read-only into the bootstrap, token refresher and codec server only
#                         (default ./secrets/hsm-pin; `make up` creates one for the image's SoftHSM2)
#   TYPE, TIME            `make backup-db TYPE=full|diff`; `make restore-pitr TIME='2026-12-06 10:40:00+00'|latest`
#                         (CONFIRM=yes: replace a database that is not empty)
#   VERSION               Temporal release for `make upgrade` (default: the one docker-compose.prod.yml
#                         pins); TEMPORAL_SERVER_IMAGE / TEMPORAL_ADMINTOOLS_IMAGE, if set, must carry it

SHELL := /bin/bash
.DEFAULT_GOAL := help

COMPOSE_FILE_PATH ?= docker-compose.prod.yml
BUNDLE_CONFIG_FILE ?= ./bundle.yaml
IMAGES_ENV ?=
UP_TIMEOUT ?= 300
KIND ?= certs
ROTATE_ARGS ?= --kind $(KIND) --probe-address temporal:7233
ROLE ?= client
DEST ?= ./client-credentials/$(ROLE)
SERVICE ?=
EXPIRY_ARGS ?=
BACKUP ?=
DATABASES ?= temporal temporal_visibility

export BUNDLE_CONFIG_FILE
# Our image, tagged with the project version (the compose file's default is the same tag).
BUNDLE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
# Image variables from IMAGES_ENV (VAR=value lines) go to compose through the environment.
ifneq ($(strip $(IMAGES_ENV)),)
include $(IMAGES_ENV)
export TEMPORAL_SERVER_IMAGE TEMPORAL_ADMINTOOLS_IMAGE POSTGRES_IMAGE TEMPORAL_UI_IMAGE DEX_IMAGE BUNDLE_IMAGE PROMETHEUS_IMAGE ALERTMANAGER_IMAGE GRAFANA_IMAGE
export BUNDLE_POSTGRES_IMAGE
endif
# PROFILE=monitoring: also Prometheus, the expiry exporter and Grafana (compose profiles; COMPOSE_PROFILES works too).
ifneq ($(strip $(PROFILE)),)
export COMPOSE_PROFILES := $(PROFILE)
endif
BUNDLE_IMAGE ?= temporal-bundle:$(BUNDLE_VERSION)
export BUNDLE_IMAGE
# PostgreSQL with pgbackrest (docker/postgres/Dockerfile, FROM POSTGRES_IMAGE): what compose runs.
BUNDLE_POSTGRES_IMAGE ?= temporal-bundle-postgres:15-bookworm
export BUNDLE_POSTGRES_IMAGE

PKCS11_COMPOSE_FILE ?= docker-compose.pkcs11.yml
HSM_PIN_FILE ?= ./secrets/hsm-pin
export HSM_PIN_FILE
# What bundle.yaml decides for compose (published ports, Dex's and the UI's names, the audience),
# rendered by `make up` (compose-env in our image), one file per project. Compose reads it after
# ./.env (so bundle.yaml wins there); a variable set in the shell wins over both.
comma := ,
space := $(eval) $(eval)
BUNDLE_ENV_FILE ?= build/$(or $(COMPOSE_PROJECT_NAME),temporal-bundle).env
COMPOSE_ENV_FILES_VALUE = $(subst $(space),$(comma),$(strip $(wildcard .env) $(BUNDLE_ENV_FILE)))
ifneq ($(wildcard $(BUNDLE_ENV_FILE)),)
export COMPOSE_ENV_FILES := $(COMPOSE_ENV_FILES_VALUE)
endif
# keys.backend pkcs11 (compose-env says so in the env file): docker-compose.pkcs11.yml too, which
# gives the token (volume bundle-hsm) and its PIN to the containers that sign or unwrap, only them.
# Expanded when used: `make up` renders the env file (compose-env-file) before its recipe expands.
KEYS_BACKEND = $(shell sed -n 's/^BUNDLE_KEYS_BACKEND=//p' "$(BUNDLE_ENV_FILE)" 2>/dev/null)
COMPOSE = docker compose -f $(COMPOSE_FILE_PATH)$(if $(filter pkcs11,$(KEYS_BACKEND)), -f $(PKCS11_COMPOSE_FILE))
# Maintenance commands run in a fresh bootstrap container: the only one that mounts private/.
BOOTSTRAP = $(COMPOSE) run --rm --no-deps bootstrap
# Backups: pg_dump/pg_restore run as the superuser over the postgresql container's unix socket
# (the only way pg_hba.conf lets postgres in); the bootstrap (the only container with private/)
# seals and opens the archive. The passphrase reaches it as a read-only file mount or by the
# variable's name (-e NAME copies the value from this environment, it never appears in argv).
PG_EXEC = $(COMPOSE) exec -T postgresql
PG_SOCKET := --host=/var/run/postgresql --username=postgres
BACKUP_PASSPHRASE_ARGS = $(if $(BACKUP_PASSPHRASE_FILE),--volume "$(abspath $(BACKUP_PASSPHRASE_FILE)):/run/backup-passphrase:ro" --env BACKUP_PASSPHRASE_FILE=/run/backup-passphrase,--env BACKUP_PASSPHRASE)
BACKUP_RUN = $(COMPOSE) run --rm --no-deps -T $(BACKUP_PASSPHRASE_ARGS)
# restore's check runs in a plain container, not `compose run`: that would create the project's
# (empty) volumes and network even for an archive it then refuses. It sees private/ read-only,
# if that volume exists, to refuse another cluster's archive.
BACKUP_CHECK_RUN = docker run --rm --network none --read-only --cap-drop ALL --cap-add DAC_OVERRIDE \
	--security-opt no-new-privileges:true --user 0:0 $(BACKUP_PASSPHRASE_ARGS)
BACKUP_CHECK_PASSPHRASE = if [ -z "$${BACKUP_PASSPHRASE_FILE:-}$${BACKUP_PASSPHRASE:-}" ]; then \
	  echo "error: set BACKUP_PASSPHRASE_FILE (a file holding the passphrase) or BACKUP_PASSPHRASE" >&2; exit 1; fi

.PHONY: help
help: ## this list
	@echo "Temporal with mTLS + JWT on Docker Compose. Usage: make TARGET"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'
	@echo
	@echo "First time: make up   (creates bundle.yaml from bundle.example.yaml, builds our image)"

bundle.yaml:
	@cp bundle.example.yaml $@
	@echo "created $@ from bundle.example.yaml: review it, then run make up again if you change it"

.PHONY: images
images: ## build our images (temporal-bundle from a local wheelhouse; PostgreSQL with pgbackrest)
	bash scripts/build-images.sh bundle
	bash scripts/build-images.sh postgres

.PHONY: standin-images
standin-images: ## build stand-ins for every image, no registry needed (tests); see build/standin-images.env
	bash scripts/build-images.sh standins

.PHONY: config
config: $(BUNDLE_CONFIG_FILE) ## validate docker-compose.prod.yml
	$(COMPOSE) config -q && echo "$(COMPOSE_FILE_PATH): valid"

.PHONY: lint
lint: ## security lint of the compose file (pip install compose-lint)
	compose-lint $(COMPOSE_FILE_PATH)

.PHONY: up
up: compose-env-file ## bootstrap secrets, start everything, wait until healthy, print how to connect
	@# On an existing stack, compose would replace containers whose image changed BEFORE the
	@# bootstrap runs: check first (an older server release, a changed shard count), so that a
	@# refused `make up` leaves the running server alone. A fresh or downed stack skips this.
	@export COMPOSE_ENV_FILES="$(COMPOSE_ENV_FILES_VALUE)"; \
	if [ -n "$$($(COMPOSE) ps --all --quiet temporal 2>/dev/null)" ]; then \
	  $(COMPOSE) run --rm --no-deps -T bootstrap init --quiet >/dev/null || exit 1; \
	fi; \
	started=$$(date +%s); \
	if ! $(COMPOSE) up --detach --wait --wait-timeout $(UP_TIMEOUT); then \
	  refused=$$($(COMPOSE) logs --no-color --no-log-prefix --since "$$started" bootstrap 2>/dev/null | grep '^error: ' | tail -n1); \
	  if [ -n "$$refused" ]; then echo "$$refused" >&2; exit 1; fi; \
	  echo "error: the stack did not become healthy; status and recent logs:" >&2; \
	  $(COMPOSE) ps -a >&2; $(COMPOSE) logs --tail=30 >&2; exit 1; \
	fi; \
	for _ in $$(seq 1 $(UP_TIMEOUT)); do \
	  state=$$($(COMPOSE) ps -a --format '{{.State}} {{.ExitCode}}' temporal-register-namespaces 2>/dev/null | head -n1); \
	  case "$$state" in exited*) break ;; esac; sleep 1; \
	done; \
	if [ "$$state" != "exited 0" ]; then \
	  echo "error: namespace registration did not succeed ($$state):" >&2; \
	  $(COMPOSE) logs temporal-register-namespaces >&2; exit 1; \
	fi; \
	echo "ready in $$(( $$(date +%s) - started ))s"
	@$(MAKE) --no-print-directory connect-info

.PHONY: compose-env-file
compose-env-file: $(BUNDLE_CONFIG_FILE)
	@docker image inspect "$(BUNDLE_IMAGE)" >/dev/null 2>&1 || bash scripts/build-images.sh bundle
	@docker image inspect "$(BUNDLE_POSTGRES_IMAGE)" >/dev/null 2>&1 || bash scripts/build-images.sh postgres
	@mkdir -p "$(dir $(BUNDLE_ENV_FILE))"
	@docker run --rm --network none --read-only --cap-drop ALL --security-opt no-new-privileges:true \
	  --user 10001:10001 --volume "$(abspath $(BUNDLE_CONFIG_FILE)):/etc/temporal-bundle/bundle.yaml:ro" \
	  "$(BUNDLE_IMAGE)" compose-env --config /etc/temporal-bundle/bundle.yaml > "$(BUNDLE_ENV_FILE).tmp" \
	  || { rm -f "$(BUNDLE_ENV_FILE).tmp"; exit 1; }
	@mv "$(BUNDLE_ENV_FILE).tmp" "$(BUNDLE_ENV_FILE)"
	@# The image's SoftHSM2 (a trial token): a random user PIN, once. The file is readable by the
	@# containers' non-root users; its directory (0700) keeps other users of this host out.
	@if grep -qx 'SOFTHSM_TOKEN_LABEL=..*' "$(BUNDLE_ENV_FILE)" && [ ! -s "$(HSM_PIN_FILE)" ]; then \
	  mkdir -p -m 0700 "$$(dirname "$(HSM_PIN_FILE)")"; \
	  (umask 0222; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$(HSM_PIN_FILE)"); \
	  echo "created $(HSM_PIN_FILE): the SoftHSM2 token's user PIN (keep it with your backups)"; \
	elif grep -qx 'BUNDLE_KEYS_BACKEND=pkcs11' "$(BUNDLE_ENV_FILE)" && [ ! -s "$(HSM_PIN_FILE)" ]; then \
	  echo "error: keys.backend pkcs11: HSM_PIN_FILE=$(HSM_PIN_FILE) must hold the token's user PIN" >&2; exit 1; \
	fi

.PHONY: connect-info
connect-info:
	@echo
	@echo "Temporal frontend: $${TEMPORAL_BIND_ADDRESS:-127.0.0.1}:$${TEMPORAL_FRONTEND_PORT:-7233}  (mTLS + JWT; TLS server name: temporal)"
	@# bundle.yaml oidc.external (compose-env wrote DEX_SCALE=0): users log in at the company's IdP.
	@issuer=$$(sed -n 's/^OIDC_ISSUER_URL=//p' "$(BUNDLE_ENV_FILE)" 2>/dev/null); \
	if [ "$$(sed -n 's/^DEX_SCALE=//p' "$(BUNDLE_ENV_FILE)" 2>/dev/null)" = 0 ]; then \
	  echo "Web UI:            https://$${UI_PUBLIC_HOST:-localhost}:$${TEMPORAL_UI_PORT:-8080}  (log in through $$issuer, no Dex)"; \
	else \
	  echo "Web UI:            https://$${UI_PUBLIC_HOST:-localhost}:$${TEMPORAL_UI_PORT:-8080}  (log in through Dex at https://$${OIDC_HOST:-auth.localhost}:$${OIDC_PORT:-5556}/dex)"; \
	  echo "                   first login: make admin-password  (shows the admin's password once)"; \
	fi
	@echo "                   the browser must trust the bundle's CA: make export ROLE=client gives ca.pem"
	@echo
	@echo "Client files for an application:  make export ROLE=client"
	@echo "  -> client-credentials/client/{ca.pem,client.pem,client.key,client.jwt}"
	@echo "     (tokens expire: re-run after the refresher re-mints them, or mount the volumes)"
	@echo "Then, for example:"
	@echo "  temporal workflow list --namespace default --address $${TEMPORAL_BIND_ADDRESS:-127.0.0.1}:$${TEMPORAL_FRONTEND_PORT:-7233} \\"
	@echo "    --tls-ca-path client-credentials/client/ca.pem --tls-cert-path client-credentials/client/client.pem \\"
	@echo "    --tls-key-path client-credentials/client/client.key --tls-server-name temporal \\"
	@echo "    --api-key \"\$$(cat client-credentials/client/client.jwt)\""

.PHONY: down
down: ## stop and remove the containers (volumes, and so the CA, keys and data, are kept)
	$(COMPOSE) down --remove-orphans

.PHONY: logs
logs: ## follow the logs (SERVICE=temporal for one service)
	$(COMPOSE) logs --follow --tail=200 $(SERVICE)

.PHONY: ps
ps: ## containers, health and exit codes
	$(COMPOSE) ps --all

.PHONY: certs
certs: $(BUNDLE_CONFIG_FILE) ## create missing certificates in the bootstrap container (existing ones are kept)
	$(BOOTSTRAP) generate-certs

.PHONY: tokens
tokens: $(BUNDLE_CONFIG_FILE) ## re-mint role tokens that are stale (past 2/3 of their lifetime)
	$(BOOTSTRAP) mint-tokens

.PHONY: rotate
rotate: $(BUNDLE_CONFIG_FILE) ## rotation step: KIND=certs|signing-key|exchange-key|ca|trust-domains|codec-key (ROTATE_ARGS for more, e.g. --wait)
	$(BOOTSTRAP) rotate $(ROTATE_ARGS)
	@# Temporal and the JWKS server re-read their certificates by themselves; PostgreSQL reloads
	@# its certificate and CA files only on SIGHUP (a reload, not a restart: connections stay).
	@$(COMPOSE) kill -s HUP postgresql >/dev/null 2>&1 && echo "postgresql: reloaded its TLS files" || true
	@# Dex, the UI gate and the UI server read their certificates at start only: restarted after a step that
	@# re-issues certificates. Nobody is logged out (Dex keeps its state on dex-data; the UI's
	@# sessions are cookies).
	@case "$(KIND)" in certs|ca|trust-domains) \
	  $(COMPOSE) restart dex ui-gate temporal-ui >/dev/null 2>&1 && echo "dex, ui-gate, temporal-ui: restarted for their new certificates" || true ;; \
	esac

.PHONY: check-expiry
check-expiry: $(BUNDLE_CONFIG_FILE) ## certificate and token expiry report (exit 0 ok, 1 warn, 2 crit, 3 unreadable)
	$(BOOTSTRAP) check-expiry /bundle $(EXPIRY_ARGS)

# `make verify`: the attacks run in our image as a plain container (`compose run` would keep the
# bootstrap's own network), once from each network: edge (where applications sit: the published
# and edge listeners admit exactly their trust domain, the others are out of reach; and the token
# attacks on the frontend), backend (JWKS, PostgreSQL), monitoring (the metrics listener, and
# Prometheus, the exporter, Alertmanager under PROFILE=monitoring) and the temporal container's
# own loopback (internal-frontend, history, matching, worker and their membership ports). It
# mounts the bundle read-only, private/ included: the CA keys sign the expired certificates it
# tries, the signing key the tokens. Nothing is written; nothing secret is printed.
VERIFY_VOLUMES := root:/bundle private:/bundle/private signing:/bundle/private/jwt trust:/bundle/trust \
	server:/bundle/server dbclient:/bundle/dbclient postgres:/bundle/postgres jwks:/bundle/jwks ui:/bundle/ui \
	ui-gate:/bundle/ui-gate dex:/bundle/dex grafana:/bundle/grafana clients:/bundle/clients codec:/bundle/codec \
	registrar:/bundle/registrar exchange:/bundle/exchange
VERIFY_FROM ?= edge backend monitoring container
VERIFY_ARGS ?=

.PHONY: verify
verify: $(BUNDLE_CONFIG_FILE) ## attack the running stack from each network: every listener x every credential, forged tokens (exit 1 if a pair is wrong)
	@set -o pipefail; \
	project="$$($(COMPOSE) config 2>/dev/null | sed -n 's/^name: //p' | head -n1)"; \
	temporal="$$($(COMPOSE) ps --status running --quiet temporal 2>/dev/null | head -n1)"; \
	if [ -z "$$project" ] || [ -z "$$temporal" ]; then echo "error: temporal is not running (make up first)" >&2; exit 1; fi; \
	services="$$($(COMPOSE) ps --status running --services | paste -sd, -)"; \
	mounts=(--volume "$(abspath $(BUNDLE_CONFIG_FILE)):/etc/temporal-bundle/bundle.yaml:ro"); \
	for v in $(VERIFY_VOLUMES); do mounts+=(--volume "$${project}_bundle-$${v%%:*}:$${v#*:}:ro"); done; \
	command=(temporal-bundle verify); \
	if [ "$(KEYS_BACKEND)" = pkcs11 ]; then \
	  mounts+=(--cap-add CHOWN --volume "$${project}_bundle-hsm:/var/lib/softhsm/tokens" \
	           --volume "$(abspath $(HSM_PIN_FILE)):$${HSM_PIN_PATH:-/run/secrets/hsm-pin}:ro"); \
	  command=(sh -c 'temporal-bundle verify "$$@"; rc=$$?; chown -R 10001:10001 /var/lib/softhsm/tokens; exit $$rc' sh); \
	fi; \
	status=0; \
	for vantage in $(VERIFY_FROM); do \
	  case "$$vantage" in container) network="container:$$temporal" ;; *) network="$${project}_$$vantage" ;; esac; \
	  echo "== verify from $$vantage (docker network $$network)"; \
	  docker run --rm --network "$$network" --read-only --tmpfs /tmp --user 0:0 --cap-drop ALL --cap-add DAC_OVERRIDE \
	    --security-opt no-new-privileges:true --env BUNDLE_CONFIG=/etc/temporal-bundle/bundle.yaml --env BUNDLE_DIR=/bundle \
	    "$${mounts[@]}" "$(BUNDLE_IMAGE)" "$${command[@]}" --from "$$vantage" --services "$$services" $(VERIFY_ARGS) \
	    || status=1; \
	done; \
	if [ "$$status" = 0 ]; then echo "verify: every pair as the security model says"; \
	else echo "verify: WRONG pairs above (or an error): the deployment does not match the security model" >&2; fi; \
	exit $$status

.PHONY: export
export: $(BUNDLE_CONFIG_FILE) ## copy ROLE's client cert, key, token, the CA and key-service.json (never a data key or KEK) to DEST (default ./client-credentials/ROLE)
	@mkdir -p "$(DEST)"
	$(COMPOSE) run --rm --no-deps --volume "$(abspath $(DEST)):/export" bootstrap sh -ec '\
	  temporal-bundle export-role --role "$(ROLE)" --dest /export -q; \
	  chown $(shell id -u):$(shell id -g) /export/*; chmod 0600 /export/$(ROLE).key /export/$(ROLE).jwt'
	@ls -l "$(DEST)"

# DEST given on the command line or in the environment wins; the default is export's otherwise.
HELM_DEST := $(if $(filter command line environment,$(origin DEST)),$(DEST),./helm-export)

.PHONY: export-helm
export-helm: $(BUNDLE_CONFIG_FILE) ## values.yaml for the Temporal Helm chart, Secrets and manifests, from this bundle, to DEST (default ./helm-export)
	@mkdir -p "$(HELM_DEST)"
	$(COMPOSE) run --rm --no-deps --volume "$(abspath $(HELM_DEST)):/export" bootstrap sh -ec '\
	  temporal-bundle export-helm --dest /export; \
	  chown -R $(shell id -u):$(shell id -g) /export'
	@echo "next: kubectl apply -f $(HELM_DEST)/namespace.yaml, then -f $(HELM_DEST)/secrets -f $(HELM_DEST)/manifests; helm install with $(HELM_DEST)/values.yaml (docs/kubernetes.md)"

.PHONY: backup
backup: $(BUNDLE_CONFIG_FILE) ## encrypted archive of every CA and key, codec keys, bundle.yaml and both databases (BACKUP=path)
	@set -euo pipefail; $(BACKUP_CHECK_PASSPHRASE); \
	if ! $(COMPOSE) ps --status running --services | grep -qx postgresql; then \
	  echo "error: postgresql is not running (make up first): the backup needs its databases" >&2; exit 1; fi; \
	archive="$(if $(BACKUP),$(BACKUP),backups/temporal-bundle-$$(date -u +%Y%m%dT%H%M%SZ).tbak)"; \
	mkdir -p -m 0700 "$$(dirname "$$archive")"; dir="$$(cd "$$(dirname "$$archive")" && pwd)"; \
	echo "backup 1/2: pg_dump $(DATABASES) in the postgresql container (unix socket, superuser postgres)"; \
	echo "backup 2/2: the bootstrap seals private/ (CAs, signing keys), codec-keys/, bundle.yaml and the dumps into $$dir/$${archive##*/}"; \
	$(PG_EXEC) bash -o pipefail -ec 'for db in $(DATABASES); do echo "dump $$db"; pg_dump $(PG_SOCKET) --format=custom "$$db" | base64; done; echo end' \
	  | $(BACKUP_RUN) --volume "$$dir:/backup" bootstrap backup create --archive "/backup/$${archive##*/}" --dumps-stdin --file-owner "$$(id -u):$$(id -g)"

.PHONY: restore
restore: ## onto an empty engine (make clean, or a new host): BACKUP=path; files, then databases, then make up
	@set -euo pipefail; $(BACKUP_CHECK_PASSPHRASE); \
	if [ -z "$(BACKUP)" ] || [ ! -f "$(BACKUP)" ]; then echo "error: BACKUP=path must name an archive file (got '$(BACKUP)')" >&2; exit 1; fi; \
	if [ -n "$$($(COMPOSE) ps --all --quiet)" ]; then \
	  echo "error: project $${COMPOSE_PROJECT_NAME:-temporal-bundle} has containers: restore onto an empty engine (make clean first)" >&2; exit 1; fi; \
	dir="$$(cd "$$(dirname "$(BACKUP)")" && pwd)"; name="$$(basename "$(BACKUP)")"; \
	config="$(abspath $(BUNDLE_CONFIG_FILE))"; bind="$$config"; [ -f "$$bind" ] || bind="$(abspath bundle.example.yaml)"; \
	run() { BUNDLE_CONFIG_FILE="$$bind" $(BACKUP_RUN) --volume "$$dir:/backup:ro" "$$@"; }; \
	echo "restore 1/5: verify $(BACKUP): passphrase, checksums, and the same cluster as any CA already here"; \
	private="$$($(COMPOSE) config 2>/dev/null | sed -n 's/^name: //p' | head -n1)_bundle-private"; \
	if docker volume inspect "$$private" >/dev/null 2>&1; then mount=(--volume "$$private:/bundle/private:ro"); else mount=(); fi; \
	$(BACKUP_CHECK_RUN) "$${mount[@]}" --volume "$$dir:/backup:ro" "$(BUNDLE_IMAGE)" backup verify --archive "/backup/$$name"; \
	echo "restore 2/5: write back the CAs, signing keys, codec keys, and bundle.yaml to $$config"; \
	run --volume "$$(dirname "$$config"):/restore-config" bootstrap backup restore --archive "/backup/$$name" \
	  --config-out "/restore-config/$$(basename "$$config")" --file-owner "$$(id -u):$$(id -g)"; \
	echo "restore 3/5: start postgresql (the bootstrap's init finds the CAs and keys and keeps them)"; \
	$(COMPOSE) up --detach --wait --wait-timeout $(UP_TIMEOUT) postgresql; \
	for db in $(DATABASES); do \
	  if [ -n "$$($(PG_EXEC) psql $(PG_SOCKET) --no-psqlrc -tAc "SELECT 1 FROM pg_database WHERE datname = '$$db'")" ]; then \
	    echo "error: database $$db already exists: restore needs an empty engine (make clean first)" >&2; exit 1; fi; \
	  echo "restore 4/5: pg_restore $$db (before the temporal service starts)"; \
	  run bootstrap backup dump --archive "/backup/$$name" --database "$$db" \
	    | $(PG_EXEC) pg_restore $(PG_SOCKET) --dbname=postgres --create --exit-on-error; \
	done; \
	echo "restore 5/5: make up"; \
	$(MAKE) --no-print-directory up

# Continuous archiving and point-in-time recovery (pgBackRest, docs/backup-and-upgrade.md). The
# db-backup service takes the base backups by itself; backup-db takes one now (its lock on the
# repository volume refuses a second one at once). restore-pitr checks everything before it stops
# anything: the repository opens with this bundle's passphrase, TIME lies between the end of the
# first backup and now (`temporal-bundle pitr`), the postgres-data volume is empty (or CONFIRM=yes).
TYPE ?= diff
TIME ?=
PITR_RUN = docker run --rm -i --network none --read-only --cap-drop ALL --security-opt no-new-privileges:true
PROJECT_VOLUME = $$($(COMPOSE) config 2>/dev/null | sed -n 's/^name: //p' | head -n1)_$(1)

.PHONY: backup-db
backup-db: $(BUNDLE_CONFIG_FILE) ## pgBackRest backup of the database now, TYPE=full|diff (db-backup takes them by itself)
	@set -euo pipefail; \
	if ! $(COMPOSE) ps --status running --services | grep -qx postgresql; then \
	  echo "error: postgresql is not running (make up first): a backup needs the running database" >&2; exit 1; fi; \
	$(COMPOSE) run --rm --no-deps -T db-backup backup "$(TYPE)"

.PHONY: restore-pitr
restore-pitr: $(BUNDLE_CONFIG_FILE) ## point-in-time recovery: TIME='YYYY-MM-DD HH:MM:SS+00'|latest onto an empty postgres-data (CONFIRM=yes replaces it)
	@set -euo pipefail; \
	if [ -z "$(TIME)" ]; then \
	  echo "error: TIME is required: 'latest' or a time with its offset, e.g. TIME='2026-12-06 10:40:00+00'" >&2; exit 1; fi; \
	confirm="$(if $(filter yes,$(CONFIRM)),--confirm,)"; \
	echo "restore-pitr 1/4: check the repository (passphrase, backups), TIME and the restore target"; \
	info="$$($(COMPOSE) run --rm --no-deps -T db-restore check $$confirm)"; \
	args="$$(printf '%s\n' "$$info" | $(PITR_RUN) "$(BUNDLE_IMAGE)" temporal-bundle pitr --time "$(TIME)" --info -)"; \
	mapfile -t restore_args <<<"$$args"; \
	echo "restore-pitr 2/4: stop the services"; \
	$(COMPOSE) stop; \
	echo "restore-pitr 3/4: pgbackrest restore into postgres-data"; \
	$(COMPOSE) run --rm --no-deps -T db-restore restore "$${restore_args[@]}" $$confirm; \
	echo "restore-pitr 4/4: start postgresql (it replays the archived WAL, then promotes), then make up"; \
	$(COMPOSE) up --detach --wait --wait-timeout $(UP_TIMEOUT) postgresql || { \
	  echo "error: postgresql did not come up after the restore (docker compose logs postgresql; 'recovery ended before configured recovery target' means TIME is past the last archived transaction: make restore-pitr TIME=latest CONFIRM=yes)" >&2; exit 1; }; \
	state=t; for _ in $$(seq 1 $(UP_TIMEOUT)); do \
	  state="$$($(PG_EXEC) psql $(PG_SOCKET) --no-psqlrc -tAc 'SELECT pg_is_in_recovery()' 2>/dev/null || true)"; \
	  [ "$$state" = f ] && break; sleep 1; done; \
	if [ "$$state" != f ]; then echo "error: postgresql is still recovering after $(UP_TIMEOUT)s (raise UP_TIMEOUT; docker compose logs postgresql)" >&2; exit 1; fi; \
	$(SUBMAKE) --no-print-directory up

.PHONY: check-backup
check-backup: $(BUNDLE_CONFIG_FILE) ## age of the last good database backup and WAL archiving (exit 0 ok, 1 warn, 2 crit, 3 unreadable)
	@$(COMPOSE) exec -T db-backup bash /opt/db-backup/db-backup.sh status >/dev/null 2>&1 || true; \
	$(PITR_RUN) --volume "$(call PROJECT_VOLUME,db-backup-metrics):/metrics:ro" \
	  --volume "$(abspath $(BUNDLE_CONFIG_FILE)):/etc/temporal-bundle/bundle.yaml:ro" \
	  "$(BUNDLE_IMAGE)" temporal-bundle check-backup --metrics /metrics/backup.prom --config /etc/temporal-bundle/bundle.yaml $(CHECK_BACKUP_ARGS)

# `make upgrade`: the target release defaults to the one the compose file pins; the new images
# are TEMPORAL_SERVER_IMAGE / TEMPORAL_ADMINTOOLS_IMAGE when set (a mirror, stand-ins), else the
# official ones at VERSION. bootstrap/ops/upgrade.py checks the step before anything changes.
PINNED_TEMPORAL := $(shell sed -n 's/.*TEMPORAL_SERVER_IMAGE:-[^}]*:\([0-9][0-9.]*\)}.*/\1/p' $(COMPOSE_FILE_PATH) | head -n1)
VERSION ?= $(PINNED_TEMPORAL)
UPGRADE_SERVER_IMAGE = $(or $(TEMPORAL_SERVER_IMAGE),temporalio/server:$(VERSION))
UPGRADE_ADMINTOOLS_IMAGE = $(or $(TEMPORAL_ADMINTOOLS_IMAGE),temporalio/admin-tools:$(VERSION))
# make runs a recipe line that expands $(MAKE) even under `make -n`; upgrade's recipe is one line,
# so it calls the sub-make through a copy: `make -n upgrade` then only prints, as it should.
SUBMAKE := $(MAKE)

.PHONY: upgrade
upgrade: $(BUNDLE_CONFIG_FILE) ## Temporal to VERSION (default: the pinned release): one minor at a time; backup, schema job, new server
	@set -euo pipefail; \
	running="$$(docker inspect --format '{{.Config.Image}}' $$($(COMPOSE) ps --status running --quiet temporal) 2>/dev/null || true)"; \
	rc=0; python3 -m bootstrap.ops.upgrade --running-image "$$running" --version "$(VERSION)" \
	  --server-image "$(UPGRADE_SERVER_IMAGE)" --admin-tools-image "$(UPGRADE_ADMINTOOLS_IMAGE)" || rc=$$?; \
	if [ "$$rc" = 3 ]; then exit 0; elif [ "$$rc" != 0 ]; then exit "$$rc"; fi; \
	echo "upgrade 1/3: make backup (the way back if anything goes wrong)"; \
	$(SUBMAKE) --no-print-directory backup; \
	export TEMPORAL_SERVER_IMAGE="$(UPGRADE_SERVER_IMAGE)" TEMPORAL_ADMINTOOLS_IMAGE="$(UPGRADE_ADMINTOOLS_IMAGE)"; \
	echo "upgrade 2/3: schema update of both databases with $(UPGRADE_ADMINTOOLS_IMAGE) (one-shot; no-op when nothing changed)"; \
	$(COMPOSE) run --rm --no-deps -T temporal-schema; \
	echo "upgrade 2/3: record $(VERSION) in private/cluster.json (make up then refuses an older server)"; \
	$(COMPOSE) run --rm --no-deps -T bootstrap init --quiet; \
	echo "upgrade 3/3: replace the temporal container with $(UPGRADE_SERVER_IMAGE) and wait until it is healthy"; \
	$(COMPOSE) up --detach --no-deps --wait --wait-timeout $(UP_TIMEOUT) temporal; \
	echo "upgrade: temporal runs $(UPGRADE_SERVER_IMAGE); keep these image variables for the next make up"

.PHONY: test
test: ## every test tier against real infrastructure (see scripts/run-tests.sh)
	bash scripts/run-tests.sh

.PHONY: clean
clean: ## remove containers AND volumes (the CA, keys, tokens and all workflow data), after asking
	@echo "This deletes the CA, every key and token, and all Temporal data of project $${COMPOSE_PROJECT_NAME:-temporal-bundle}."
	@if [ "$(CONFIRM)" = yes ]; then answer=yes; else read -r -p "Type 'yes' to continue: " answer; fi; \
	if [ "$$answer" != yes ]; then echo "aborted"; exit 1; fi
	$(COMPOSE) down --volumes --remove-orphans

.PHONY: admin-password
admin-password: $(BUNDLE_CONFIG_FILE) ## print the Web UI admin's first password, once (then it is deleted)
	@$(BOOTSTRAP) show-admin-password
