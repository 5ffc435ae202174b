{{/* ---------------------------------------------------------------------------------------
Names and labels (Helm best practices: app.kubernetes.io/* labels, 63-character names).
--------------------------------------------------------------------------------------- */}}

{{- define "callscribe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "callscribe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callscribe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* labels on every object */}}
{{- define "callscribe.labels" -}}
helm.sh/chart: {{ include "callscribe.chart" . }}
{{ include "callscribe.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: callscribe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "callscribe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callscribe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* per component: (dict "ctx" $ "component" "gateway") */}}
{{- define "callscribe.componentLabels" -}}
{{ include "callscribe.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "callscribe.componentSelectorLabels" -}}
{{ include "callscribe.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "callscribe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "callscribe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "callscribe.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Derived values.
--------------------------------------------------------------------------------------- */}}

{{/* Drain budget: preStop sleep + --drain-seconds + the server's flush (FLUSH_SECONDS = 15 in
gateway/server.py: ended tasks get their last results out) + a margin.  A pod is SIGKILLed at
terminationGracePeriodSeconds, counted from the start of preStop. */}}
{{- define "callscribe.gateway.minGrace" -}}
{{- add (int .Values.gateway.preStopSleepSeconds) (int .Values.gateway.drainSeconds) 15 5 }}
{{- end }}

{{- define "callscribe.gateway.grace" -}}
{{- if .Values.gateway.terminationGracePeriodSeconds }}
{{- int .Values.gateway.terminationGracePeriodSeconds }}
{{- else }}
{{- include "callscribe.gateway.minGrace" . }}
{{- end }}
{{- end }}

{{/* the worker's replica bound: the audio topic's partitions (a consumer more is idle) */}}
{{- define "callscribe.worker.maxReplicas" -}}
{{- if .Values.worker.autoscaling.maxReplicas }}
{{- int .Values.worker.autoscaling.maxReplicas }}
{{- else }}
{{- int .Values.kafka.topics.audio.partitions }}
{{- end }}
{{- end }}

{{/* some pod talks to Kafka: the workers, or the gateway in `serve --kafka` mode */}}
{{- define "callscribe.kafka.used" -}}
{{- if or .Values.worker.enabled (and .Values.gateway.enabled .Values.gateway.kafka.enabled) }}true{{ end }}
{{- end }}

{{- define "callscribe.kafka.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "callscribe.kafka.tls" -}}
{{- if or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "callscribe.apiKeys.secretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "callscribe.fullname" .)) }}
{{- end }}

{{- define "callscribe.kafka.saslSecretName" -}}
{{- .Values.kafka.sasl.existingSecret | default (printf "%s-kafka-sasl" (include "callscribe.fullname" .)) }}
{{- end }}

{{- define "callscribe.kafka.caSecretName" -}}
{{- .Values.kafka.tls.caSecret | default (printf "%s-kafka-ca" (include "callscribe.fullname" .)) }}
{{- end }}

{{- define "callscribe.kafka.hasCa" -}}
{{- if or .Values.kafka.tls.caSecret .Values.kafka.tls.ca }}true{{ end }}
{{- end }}

{{- define "callscribe.model.enabled" -}}
{{- if or .Values.model.existingClaim .Values.model.volume }}true{{ end }}
{{- end }}

{{- define "callscribe.model.dir" -}}
{{- if .Values.model.subPath }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) (trimPrefix "/" .Values.model.subPath) }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Validation: values the schema cannot express.  Included once, from configmap.yaml.
--------------------------------------------------------------------------------------- */}}
{{- define "callscribe.validate" -}}
{{- $partitions := int .Values.kafka.topics.audio.partitions }}
{{- if include "callscribe.kafka.used" . }}
  {{- if not .Values.kafka.bootstrapServers }}
    {{- fail "worker.enabled and gateway.kafka.enabled need kafka.bootstrapServers (host:port[,host:port...])" }}
  {{- end }}
  {{- if include "callscribe.kafka.sasl" . }}
    {{- if and (not .Values.kafka.sasl.existingSecret) (or (not .Values.kafka.sasl.username) (not .Values.kafka.sasl.password)) }}
      {{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret, or kafka.sasl.username and kafka.sasl.password" .Values.kafka.securityProtocol) }}
    {{- end }}
  {{- end }}
{{- end }}
{{- if .Values.worker.enabled }}
  {{- $max := int (include "callscribe.worker.maxReplicas" .) }}
  {{- if gt $max $partitions }}
    {{- fail (printf "worker.autoscaling.maxReplicas (%d) exceeds kafka.topics.audio.partitions (%d): a worker beyond the partition count gets no partition and sits idle" $max $partitions) }}
  {{- end }}
  {{- if and .Values.worker.autoscaling.enabled (gt (int .Values.worker.autoscaling.minReplicas) $max) }}
    {{- fail (printf "worker.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int .Values.worker.autoscaling.minReplicas) $max) }}
  {{- end }}
  {{- if and (not .Values.worker.autoscaling.enabled) (gt (int .Values.worker.replicas) $partitions) }}
    {{- fail (printf "worker.replicas (%d) exceeds kafka.topics.audio.partitions (%d): the extra workers would sit idle" (int .Values.worker.replicas) $partitions) }}
  {{- end }}
  {{- if and .Values.worker.autoscaling.keda.enabled (not .Values.worker.autoscaling.enabled) }}
    {{- fail "worker.autoscaling.keda.enabled needs worker.autoscaling.enabled" }}
  {{- end }}
{{- end }}
{{- if .Values.gateway.enabled }}
  {{- $grace := int (include "callscribe.gateway.grace" .) }}
  {{- $min := int (include "callscribe.gateway.minGrace" .) }}
  {{- if lt $grace $min }}
    {{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + drainSeconds + 20 (%d), or running calls are killed before they drain" $grace $min) }}
  {{- end }}
{{- end }}
{{- if and .Values.model.existingClaim .Values.model.volume }}
  {{- fail "set model.existingClaim or model.volume, not both" }}
{{- end }}
{{- $derived := list "CALLSCRIBE_KAFKA_BOOTSTRAP" "CALLSCRIBE_KAFKA_CLIENT_ID" "CALLSCRIBE_KAFKA_TOPIC_AUDIO" "CALLSCRIBE_KAFKA_AUDIO_PARTITIONS" "CALLSCRIBE_KAFKA_AUDIO_RETENTION_MS" "CALLSCRIBE_KAFKA_TOPIC_TRANSCRIPTS" "CALLSCRIBE_KAFKA_TRANSCRIPTS_PARTITIONS" "CALLSCRIBE_KAFKA_TOPIC_PARTIALS" "CALLSCRIBE_KAFKA_PARTIALS_PARTITIONS" "CALLSCRIBE_KAFKA_PARTIALS_ENABLED" "CALLSCRIBE_KAFKA_TOPIC_DEAD_LETTERS" "CALLSCRIBE_KAFKA_DEAD_LETTERS_PARTITIONS" "CALLSCRIBE_KAFKA_REPLICATION_FACTOR" "CALLSCRIBE_KAFKA_SECURITY_PROTOCOL" "CALLSCRIBE_KAFKA_SASL_MECHANISM" "CALLSCRIBE_KAFKA_SSL_CHECK_HOSTNAME" "CALLSCRIBE_KAFKA_SSL_CAFILE" "CALLSCRIBE_KAFKA_SSL_CERTFILE" "CALLSCRIBE_KAFKA_SSL_KEYFILE" "CALLSCRIBE_MODEL_DIR" "CALLSCRIBE_METRICS_PORT" "CALLSCRIBE_KAFKA_WORKER_GROUP" "CALLSCRIBE_HOST" "CALLSCRIBE_PORT" }}
{{- $secret := list "CALLSCRIBE_API_KEYS" "CALLSCRIBE_KAFKA_SASL_USERNAME" "CALLSCRIBE_KAFKA_SASL_PASSWORD" "CALLSCRIBE_KAFKA_SSL_KEY_PASSWORD" }}
{{- range $k, $v := .Values.config }}
  {{- if has $k $secret }}
    {{- fail (printf "config.%s is a secret: use apiKeys / kafka.sasl / kafka.tls (Secrets or existingSecret), not the ConfigMap" $k) }}
  {{- end }}
  {{- if has $k $derived }}
    {{- fail (printf "config.%s is set by the chart from structured values (kafka.*, model.*, gateway.port, worker.metricsPort); set those instead" $k) }}
  {{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------------
Pod building blocks shared by the gateway and the worker.
--------------------------------------------------------------------------------------- */}}

{{/* volumes every pod has: a writable /tmp and the data dir (root fs is read-only) */}}
{{- define "callscribe.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
- name: data
  {{- if .Values.dataVolume }}
  {{- toYaml .Values.dataVolume | nindent 2 }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- if .Values.model.existingClaim }}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.existingClaim }}
    readOnly: true
{{- else if .Values.model.volume }}
- name: model
  {{- toYaml .Values.model.volume | nindent 2 }}
{{- end }}
{{- end }}

{{- define "callscribe.commonMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/callscribe
{{- if include "callscribe.model.enabled" . }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* env every container has, beyond the ConfigMap */}}
{{- define "callscribe.commonEnv" -}}
{{- if include "callscribe.model.enabled" . }}
- name: CALLSCRIBE_MODEL_DIR
  value: {{ include "callscribe.model.dir" . | quote }}
{{- end }}
{{- end }}

{{/* Kafka credentials and certificates, for the containers that talk to Kafka */}}
{{- define "callscribe.kafkaEnv" -}}
{{- if include "callscribe.kafka.sasl" . }}
- name: CALLSCRIBE_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "callscribe.kafka.saslSecretName" . }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: CALLSCRIBE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "callscribe.kafka.saslSecretName" . }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if include "callscribe.kafka.tls" . }}
{{- if include "callscribe.kafka.hasCa" . }}
- name: CALLSCRIBE_KAFKA_SSL_CAFILE
  value: /etc/callscribe/kafka-ca/{{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: CALLSCRIBE_KAFKA_SSL_CERTFILE
  value: /etc/callscribe/kafka-client/tls.crt
- name: CALLSCRIBE_KAFKA_SSL_KEYFILE
  value: /etc/callscribe/kafka-client/tls.key
{{- end }}
{{- if .Values.kafka.tls.keyPasswordSecret }}
- name: CALLSCRIBE_KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.tls.keyPasswordSecret }}
      key: {{ .Values.kafka.tls.keyPasswordKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callscribe.kafkaVolumes" -}}
{{- if include "callscribe.kafka.tls" . }}
{{- if include "callscribe.kafka.hasCa" . }}
- name: kafka-ca
  secret:
    secretName: {{ include "callscribe.kafka.caSecretName" . }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end }}

{{- define "callscribe.kafkaMounts" -}}
{{- if include "callscribe.kafka.tls" . }}
{{- if include "callscribe.kafka.hasCa" . }}
- name: kafka-ca
  mountPath: /etc/callscribe/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/callscribe/kafka-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* pod template annotations: roll the pods when the settings or secrets the chart renders
change (Secrets given by existingSecret are the operator's to roll: kubectl rollout restart) */}}
{{- define "callscribe.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ (list .Values.apiKeys .Values.kafka.sasl .Values.kafka.tls) | toJson | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
