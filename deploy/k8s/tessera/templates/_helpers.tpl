{{/* Names. */}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels: pass (dict "ctx" $ "component" "coordinator"). */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.labels" -}}
{{ include "tessera.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tessera
{{- end -}}

{{/* Configuration checks: one clear error before anything is rendered. */}}
{{- define "tessera.validate" -}}
{{- $tp := int .Values.tp -}}
{{- $pp := int .Values.pp -}}
{{- if or (lt $tp 1) (lt $pp 1) -}}
{{- fail (printf "tp and pp must be at least 1 (tp=%v, pp=%v)" .Values.tp .Values.pp) -}}
{{- end -}}
{{- if and .Values.model.hostPath .Values.model.existingClaim -}}
{{- fail "set model.hostPath or model.existingClaim, not both" -}}
{{- end -}}
{{- if and (eq .Values.workers.mode "leaderworkerset") (ne .Values.device "cuda") -}}
{{- fail "workers.mode=leaderworkerset needs device=cuda: a group spanning pods meets through etcd and NCCL; CPU ranks need MPI, so use workers.mode=statefulset for device=cpu" -}}
{{- end -}}
{{- if and (not .Values.etcd.external.endpoints) (lt (int .Values.etcd.replicas) 1) -}}
{{- fail "etcd.replicas must be at least 1, or set etcd.external.endpoints" -}}
{{- end -}}
{{- $grace := int .Values.coordinator.terminationGracePeriodSeconds -}}
{{- $need := add (int .Values.coordinator.drainTimeoutSeconds) (int .Values.coordinator.preStopSleepSeconds) -}}
{{- if and (gt $grace 0) (le $grace $need) -}}
{{- fail (printf "coordinator.terminationGracePeriodSeconds (%d) must exceed drainTimeoutSeconds + preStopSleepSeconds (%d), or the kubelet kills a coordinator mid-drain" $grace $need) -}}
{{- end -}}
{{- if le (int .Values.workers.terminationGracePeriodSeconds) (int .Values.workers.drainTimeoutSeconds) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%d) must exceed workers.drainTimeoutSeconds (%d), or the kubelet kills a worker mid-drain" (int .Values.workers.terminationGracePeriodSeconds) (int .Values.workers.drainTimeoutSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* The coordinator's grace period: the value, or drain + preStop + 15 s. */}}
{{- define "tessera.coordinatorGrace" -}}
{{- $grace := int .Values.coordinator.terminationGracePeriodSeconds -}}
{{- if gt $grace 0 -}}
{{- $grace -}}
{{- else -}}
{{- add (int .Values.coordinator.drainTimeoutSeconds) (int .Values.coordinator.preStopSleepSeconds) 15 -}}
{{- end -}}
{{- end -}}

{{/* etcd: the chart's members (headless Service names) or the external endpoints, comma-separated. */}}
{{- define "tessera.etcdHeadless" -}}
{{- printf "%s-etcd-headless" (include "tessera.fullname" .) -}}
{{- end -}}

{{- define "tessera.etcdEndpoints" -}}
{{- if .Values.etcd.external.endpoints -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $full := include "tessera.fullname" . -}}
{{- $svc := include "tessera.etcdHeadless" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $eps = append $eps (printf "http://%s-etcd-%d.%s.%s.svc.%s:%d" $full $i $svc $.Release.Namespace $.Values.clusterDomain (int $.Values.etcd.clientPort)) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}
{{- end -}}

{{/* Environment every tessera container gets (the downward API). */}}
{{- define "tessera.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* The model volume and its mount (nothing when the model needs no volume). */}}
{{- define "tessera.modelVolume" -}}
{{- if .Values.model.hostPath -}}
- name: model
  hostPath:
    path: {{ .Values.model.hostPath }}
    type: Directory
{{- else if .Values.model.existingClaim -}}
- name: model
  persistentVolumeClaim:
    claimName: {{ .Values.model.existingClaim }}
    readOnly: true
{{- end -}}
{{- end -}}

{{- define "tessera.modelMount" -}}
{{- if or .Values.model.hostPath .Values.model.existingClaim -}}
- name: model
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end -}}
{{- end -}}

{{/* GPUs a worker pod asks for: tp*pp (statefulset) or 1, its one rank's (leaderworkerset). */}}
{{- define "tessera.workerResources" -}}
{{- $res := deepCopy (default (dict) .Values.workers.resources) -}}
{{- if eq .Values.device "cuda" -}}
{{- $gpus := mul (int .Values.tp) (int .Values.pp) -}}
{{- if eq .Values.workers.mode "leaderworkerset" -}}
{{- $gpus = 1 -}}
{{- end -}}
{{- $limits := default (dict) (get $res "limits") -}}
{{- $_ := set $limits "nvidia.com/gpu" $gpus -}}
{{- $_ := set $res "limits" $limits -}}
{{- $requests := default (dict) (get $res "requests") -}}
{{- $_ := set $requests "nvidia.com/gpu" $gpus -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
