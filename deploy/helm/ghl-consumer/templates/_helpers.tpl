{{/* Names and labels. */}}
{{- define "ghl-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ghl-consumer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ghl-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ghl-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: consumer
{{- end -}}

{{- define "ghl-consumer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
app.kubernetes.io/name: {{ include "ghl-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ghl-consumer.redisName" -}}
{{- printf "%s-redis" (include "ghl-consumer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ghl-consumer.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ghl-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* Kafka security: which parts are on. */}}
{{- define "ghl-consumer.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "ghl-consumer.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* Where the Kafka TLS Secret's files are mounted. */}}
{{- define "ghl-consumer.kafkaTlsDir" -}}/etc/ghl-consumer/kafka-tls{{- end -}}

{{/* The consumer's workload: a StatefulSet when its profile state is on persistent volumes. */}}
{{- define "ghl-consumer.workloadKind" -}}
{{- if and .Values.profileState.enabled .Values.profileState.persistent.enabled -}}
StatefulSet
{{- else -}}
Deployment
{{- end -}}
{{- end -}}

{{/* Where integration tokens are mounted (tokenAs: file): one file per integration id. */}}
{{- define "ghl-consumer.tokenDir" -}}/var/run/secrets/ghl-consumer/tokens{{- end -}}

{{/* The environment variable of an integration's token (tokenAs: env). */}}
{{- define "ghl-consumer.tokenEnv" -}}
GHL_TOKEN_{{ regexReplaceAll "[^A-Z0-9]" (upper .) "_" }}
{{- end -}}

{{/* Checks of the values that the JSON schema cannot express; each failure names the value. */}}
{{- define "ghl-consumer.validate" -}}
{{- $v := .Values -}}
{{- $max := $v.keda.enabled | ternary (int $v.keda.maxReplicas) (int $v.replicaCount) -}}
{{- if gt $max (int $v.kafka.partitions) -}}
{{- fail (printf "%s (%d) > kafka.partitions (%d): an instance without a partition idles (README, sizing rule)" ($v.keda.enabled | ternary "keda.maxReplicas" "replicaCount") $max (int $v.kafka.partitions)) -}}
{{- end -}}
{{- if and $v.keda.enabled (gt (int $v.keda.minReplicas) (int $v.keda.maxReplicas)) -}}
{{- fail "keda.minReplicas must be at most keda.maxReplicas" -}}
{{- end -}}
{{- if and (gt $max 1) (not $v.redis.bundled) (not $v.redis.external.existingSecret) -}}
{{- fail "more than one instance shares HighLevel's rate budget through Redis: set redis.bundled=true or redis.external.existingSecret" -}}
{{- end -}}
{{- if and $v.redis.bundled $v.redis.external.existingSecret -}}
{{- fail "redis: bundled and external.existingSecret both set; choose one" -}}
{{- end -}}
{{- if and $v.metrics.podMonitor.enabled $v.metrics.serviceMonitor.enabled -}}
{{- fail "metrics: podMonitor and serviceMonitor both enabled would scrape every pod twice; choose one" -}}
{{- end -}}
{{- if and (include "ghl-consumer.kafkaSasl" .) (not $v.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.sasl.existingSecret: required with kafka.securityProtocol %s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and (or $v.kafka.tls.caKey $v.kafka.tls.certKey $v.kafka.tls.keyKey) (not $v.kafka.tls.existingSecret) -}}
{{- fail "kafka.tls.existingSecret: required when kafka.tls.caKey, certKey or keyKey is set" -}}
{{- end -}}
{{- if and $v.kafka.tls.existingSecret (not (include "ghl-consumer.kafkaTls" .)) -}}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol %s uses no TLS (SSL or SASL_SSL)" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if ne (empty $v.kafka.tls.certKey) (empty $v.kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey: mutual TLS needs both" -}}
{{- end -}}
{{- range $key, $_ := $v.kafka.librdkafka -}}
{{- if regexMatch "(?i)password|passphrase|secret|token|credential|private|key\\.pem|oauthbearer\\.config" $key -}}
{{- fail (printf "kafka.librdkafka.%s: a secret is never a value; use kafka.sasl / kafka.tls (Secrets), or extraConfigToml with { env = ... }" $key) -}}
{{- end -}}
{{- if or (eq $key "security.protocol") (hasPrefix "sasl." $key) (hasSuffix ".location" $key) -}}
{{- fail (printf "kafka.librdkafka.%s: set by the chart from kafka.securityProtocol, kafka.sasl and kafka.tls" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := $v.kafka.extra -}}
{{- if has $key (list "bootstrap_servers" "topics" "group_id" "auto_offset_reset" "create_topics" "librdkafka") -}}
{{- fail (printf "kafka.extra.%s: set by the chart from kafka's own values" $key) -}}
{{- end -}}
{{- end -}}
{{- if and $v.profileState.persistent.enabled (not $v.profileState.enabled) -}}
{{- fail "profileState.persistent.enabled needs profileState.enabled: the volumes hold the profile state" -}}
{{- end -}}
{{- if and $v.profileState.enabled (gt (len $v.kafka.topics) 1) -}}
{{- fail (printf "profileState.enabled: the partitioned profile state follows one input topic's partitions, kafka.topics has %d; set profileState.enabled=false to keep every profile in memory" (len $v.kafka.topics)) -}}
{{- end -}}
{{- if and $v.profileState.enabled (regexMatch "(?m)^\\s*(state_dir|cache_entries)\\s*=" (default "" $v.extraConfigToml)) -}}
{{- fail "extraConfigToml: [profiles] state_dir and cache_entries are set by the chart from profileState (mountPath, cacheEntries)" -}}
{{- end -}}
{{- $ids := dict -}}
{{- range $i, $integration := $v.integrations -}}
{{- if hasKey $ids $integration.id -}}
{{- fail (printf "integrations[%d].id: %q is used twice" $i $integration.id) -}}
{{- end -}}
{{- $_ := set $ids $integration.id true -}}
{{- $env := include "ghl-consumer.tokenEnv" $integration.id -}}
{{- if and (eq $v.tokenAs "env") (hasKey $ids $env) -}}
{{- fail (printf "integrations[%d].id: its token variable %s is another integration's too; rename one" $i $env) -}}
{{- end -}}
{{- $_ := set $ids $env true -}}
{{- if regexMatch "(?m)^\\s*access_token\\s*=" (default "" $integration.extraToml) -}}
{{- fail (printf "integrations[%d].extraToml: the token comes from integrations[%d].token (a Secret), not access_token" $i $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
